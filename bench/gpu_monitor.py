"""What watching a real model costs: examples/train_char_lm.py --compare
(the same training without, then with, the Monitor) for the configurations
of issue 9's table, against a real altgradd, on a GPU.

  python3 bench/gpu_monitor.py --altgradd build/daemon/altgradd [--only NAME ...]
                               [--steps N] [--json out.json]

Each configuration starts its own daemon (temporary sockets and database)
and reports the step-time ratio with/without the Monitor, the mean sampled
step, the Monitor's own cost split by part, the client's drops, and, from the
daemon, how many (tensor, step) results it stored against how many the run
should have (every watched tensor at every sampled step)."""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "python"))

SMALL = ["--d-model", "128", "--layers", "4", "--heads", "4", "--context", "64",
         "--batch", "32"]
M85 = ["--d-model", "768", "--layers", "12", "--heads", "12", "--context", "256",
       "--batch", "16"]
M350 = ["--d-model", "1024", "--layers", "24", "--heads", "16", "--context", "256",
        "--batch", "16"]

TINY = ["--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16", "--batch", "4"]

CONFIGS = {
    # a smoke test of this script (any machine)
    "tiny-daemon": TINY + ["--compute", "daemon"],
    "tiny-device": TINY + ["--compute", "device"],
    # issue 9's table as it was (snapshots to the daemon, whole tensors)
    "small-daemon": SMALL + ["--compute", "daemon"],
    "85m-daemon": M85 + ["--compute", "daemon"],
    "85m-daemon-sample4096": M85 + ["--compute", "daemon", "--sample-max", "4096"],
    "85m-daemon-block": M85 + ["--compute", "daemon", "--policy", "block"],
    "85m-daemon-every1": M85 + ["--compute", "daemon", "--every", "1"],
    # counts on the device
    "small-device": SMALL + ["--compute", "device"],
    "85m-device": M85 + ["--compute", "device"],
    "85m-device-every1": M85 + ["--compute", "device", "--every", "1"],
    "85m-device-flips": M85 + ["--compute", "device", "--flips"],
    "350m-device": M350 + ["--compute", "device"],
}


def start_daemon(binary, tmp):
    ingest, query = f"ipc://{tmp}/ingest.sock", f"ipc://{tmp}/query.sock"
    log = open(os.path.join(tmp, "daemon.log"), "w")
    # HTTP on a port the kernel picks, for /metrics at the end of the run
    p = subprocess.Popen([binary, "--ingest", ingest, "--query", query, "--db",
                          os.path.join(tmp, "a.db"), "--http", "127.0.0.1:0"],
                         stdout=log, stderr=subprocess.STDOUT)
    for _ in range(100):
        if os.path.exists(os.path.join(tmp, "query.sock")):
            break
        time.sleep(0.05)
    return p, ingest, query


POOL_METRICS = ("altgrad_pool_threads", "altgrad_snapshots_evaluated_total",
                "altgrad_snapshots_pipelined_total", "altgrad_snapshot_waits_total",
                "altgrad_engine_state_bytes", "altgrad_engine_budget_bytes",
                "altgrad_writer_commits_total", "altgrad_writer_commits_hurried_total",
                "altgrad_dropped_total", "altgrad_shm_snapshots_total")


def pool_metrics(tmp):
    """The daemon's pool, memory and writer numbers from its /metrics, or {}."""
    import re
    import urllib.request
    try:
        with open(os.path.join(tmp, "daemon.log")) as f:
            m = re.search(r"on http://([0-9.]+:[0-9]+)/", f.read())
        if not m:
            return {}
        with urllib.request.urlopen(f"http://{m.group(1)}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in POOL_METRICS:
            out[name[len("altgrad_"):]] = float(value)
    return out


def stored_results(query, run, steps, every):
    """(results stored, results expected) for the run's weight tensors."""
    from altgrad import Client
    with Client(query_url=query, ingest_url=query.replace("query", "ingest")) as c:
        tensors = [t for t in c.tensors(run)["tensors"] if t.get("role") == "weight"]
        stored = 0
        sampled = len(range(0, steps, every))
        for t in tensors:
            h = c.history(t["name"], run=run, format="E5M2")
            stored += len(h["points"])
        return stored, sampled * len(tensors), len(tensors)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--altgradd", required=True)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default=None, help="torch device (default: cuda if there)")
    args = ap.parse_args()
    names = args.only or list(CONFIGS)
    results = []
    for name in names:
        tmp = tempfile.mkdtemp(prefix="agbench-")
        daemon, ingest, query = start_daemon(args.altgradd, tmp)
        try:
            out = os.path.join(tmp, "r.json")
            cmd = [sys.executable, os.path.join(ROOT, "examples", "train_char_lm.py"),
                   "--compare", "--steps", str(args.steps), "--warmup", "10",
                   "--log-every", "0", "--ingest", ingest, "--query", query,
                   "--run", name, "--json", out] + CONFIGS[name] + (
                       ["--device", args.device] if args.device else [])
            t0 = time.time()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            r = {"config": name, "args": CONFIGS[name], "rc": proc.returncode,
                 "seconds": time.time() - t0}
            if proc.returncode not in (0, 3):
                r["error"] = proc.stdout[-2000:] + proc.stderr[-2000:]
            if os.path.exists(out):
                with open(out) as f:
                    full = json.load(f)
                without, with_ = full["runs"][0], full["runs"][1]
                rep = with_["monitor_report"]
                every = 1 if "--every" in CONFIGS[name] else 10
                r.update({
                    "params": with_["parameters"],
                    "ratio": full.get("overhead_ratio"),
                    "step_ms_without": without["step_ms_mean"],
                    "step_ms_with": with_["step_ms_mean"],
                    "sampled_ms_without": without["step_ms_mean_sampled"],
                    "sampled_ms_with": with_["step_ms_mean_sampled"],
                    "monitor_ms_per_sampled_step": rep["ms_per_sampled_step"],
                    "parts_s": {k: rep.get(k) for k in (
                        "fetch_seconds", "fetch_wait_seconds", "count_seconds",
                        "send_seconds", "stats_seconds")},
                    "dropped": full["client"]["dropped"],
                    "undelivered": full["client"]["undelivered"],
                    "send_errors": rep.get("send_errors"),
                })
                st, want, nt = stored_results(query, full["run"], args.steps, every)
                r.update({"results_stored": st, "results_expected": want, "tensors": nt})
                r["daemon"] = pool_metrics(tmp)
            results.append(r)
        finally:
            # a SIGTERM drains and commits: how long that took, and the
            # daemon's last words when it was slow (killed after 120 s)
            t0 = time.time()
            daemon.terminate()
            try:
                daemon.wait(timeout=120)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
            stop = {"stop_seconds": round(time.time() - t0, 2), "stop_rc": daemon.returncode}
            if stop["stop_seconds"] > 10 or daemon.returncode != 0:
                with open(os.path.join(tmp, "daemon.log"), errors="replace") as f:
                    stop["log_tail"] = f.read()[-3000:]
            if results and results[-1].get("config") == name:
                results[-1]["daemon_stop"] = stop
                print(json.dumps(results[-1]), flush=True)
            else:
                print(json.dumps({"config": name, "daemon_stop": stop}), flush=True)
            shutil.rmtree(tmp, ignore_errors=True)
    print("\nconfig                    params  ratio  sampled ms (with/without)  dropped  "
          "stored/expected")
    for r in results:
        if "ratio" not in r:
            print(f"{r['config']:24s} failed rc {r['rc']}")
            continue
        print(f"{r['config']:24s} {r['params'] / 1e6:5.0f}M  {r['ratio']:.3f}  "
              f"{r['sampled_ms_with']:7.1f} / {r['sampled_ms_without']:6.1f}  "
              f"{r['dropped']:7d}  {r['results_stored']}/{r['results_expected']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
