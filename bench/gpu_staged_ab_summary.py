"""bench/gpu_staged_ab.sh's line per run: gpu_monitor.py's JSON lines on stdin."""
import json
import sys

for line in sys.stdin:
    r = json.loads(line)
    if "ratio" not in r:
        print(r["config"], "failed", r.get("error", "")[-300:])
        continue
    p = r["parts_s"]
    print(f"{r['config']:20s} ratio {r['ratio']:.3f} sampled {r['sampled_ms_with']:.1f}/"
          f"{r['sampled_ms_without']:.1f} ms fetch {p['fetch_seconds']:.2f} s "
          f"send {p['send_seconds']:.2f} s dropped {r['dropped']} "
          f"stored {r['results_stored']}/{r['results_expected']} "
          f"daemon stopped in {r.get('daemon_stop', {}).get('stop_seconds')} s")
    if "log_tail" in r.get("daemon_stop", {}):
        print("  its log ends:", r["daemon_stop"]["log_tail"][-1500:].replace("\n", "\n    "))
