"""examples/train_char_lm.py on the CPU for a few steps against a real
altgradd, then its results queried back through the Client and the CLI."""

import json
import os
import subprocess
import sys

from daemon_fixture import cli_binary, eventually

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAINER = os.path.join(ROOT, "examples", "train_char_lm.py")


def test_char_lm_trains_with_the_monitor_and_its_stalls_are_queryable(daemon, tmp_path):
    out = tmp_path / "result.json"
    cmd = [sys.executable, TRAINER, "--device", "cpu", "--steps", "5", "--every", "2",
           "--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16",
           "--batch", "4", "--compare", "--warmup", "1", "--log-every", "0",
           "--ingest", daemon.ingest, "--query", daemon.query, "--run", "charlm-test",
           "--json", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step time ratio with/without monitor" in r.stdout
    assert "dropped 0, undelivered 0" in r.stdout, r.stdout
    res = json.loads(out.read_text())
    plain, mon = res["runs"]
    assert not plain["monitor"] and mon["monitor"]
    assert plain["final_loss"] == mon["final_loss"]  # same seed, same training
    assert res["overhead_ratio"] > 0
    rep = mon["monitor_report"]
    assert rep["steps"] == 5 and rep["sampled_steps"] == 3
    assert res["summary"]["top"]["E5M2"]["tensors"], res["summary"]
    assert res["run"] == "charlm-test" and "run charlm-test ..." in r.stdout

    with daemon.client("charlm-reader") as c:
        names = {t["name"] for t in c.tensors(run="charlm-test")["tensors"]}
        assert {"tok.weight", "blocks.0.attn.qkv.weight", "head.weight", "blocks.0.fc",
                "head.weight.grad"} <= names
        h = eventually(lambda: (lambda p: p if len(p) == 3 else None)(
            c.history("blocks.0.fc.weight", run="charlm-test", format="E3M4")["points"]),
            what="three snapshots")
        assert [p["step"] for p in h] == [0, 2, 4]
        assert all(p["total"] > 0 for p in h)
        run = [x for x in c.runs()["runs"] if x["name"] == "charlm-test"][0]
        assert run["ended_ms"] > 0 and run["dropped"] == 0

    cli = cli_binary()
    top = subprocess.run([cli, "--query", daemon.query, "--json", "top", "charlm-test",
                          "--format", "E5M2", "--limit", "3"],
                         capture_output=True, text=True, timeout=60)
    assert top.returncode == 0, top.stderr
    assert "charlm-test" in top.stdout or "weight" in top.stdout
    hist = subprocess.run([cli, "--query", daemon.query, "history", "charlm-test",
                           "head.weight"], capture_output=True, text=True, timeout=60)
    assert hist.returncode == 0, hist.stderr


def test_char_lm_without_a_daemon_says_so_and_exits_nonzero(tmp_path):
    nowhere = f"ipc://{tmp_path}/ingest.sock", f"ipc://{tmp_path}/query.sock"
    cmd = [sys.executable, TRAINER, "--device", "cpu", "--steps", "2", "--every", "1",
           "--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16",
           "--batch", "4", "--log-every", "0", "--ingest", nowhere[0], "--query", nowhere[1],
           "--run", "charlm-nowhere"]
    # no daemon: the trainer says so at once (its flush and close do not wait it out)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 3, r.stdout + r.stderr
    assert f"no daemon at {nowhere[0]}" in r.stderr, r.stderr
    assert "never confirmed by the daemon" in r.stderr, r.stderr
    undelivered = [x for x in r.stdout.splitlines() if "undelivered" in x]
    assert undelivered and not undelivered[-1].endswith("undelivered 0"), r.stdout


def test_char_lm_snapshots_go_through_shared_memory_unless_turned_off(daemon, tmp_path):
    """--compute daemon sends whole tensors: with the daemon on this machine and of
    this user they go through the client's shared-memory segment (sized for a whole
    sampled step), and with --shm-mib 0 through the socket; the daemon files the
    same snapshots either way."""
    got = {}
    for shm in ("-1", "0"):
        out = tmp_path / f"result{shm}.json"
        run = f"charlm-shm{shm}"
        cmd = [sys.executable, TRAINER, "--device", "cpu", "--steps", "6", "--every", "2",
               "--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16",
               "--batch", "4", "--warmup", "1", "--log-every", "0", "--compute", "daemon",
               "--form", "sgd", "--policy", "block", "--shm-mib", shm,
               "--ingest", daemon.ingest, "--query", daemon.query, "--run", run,
               "--json", str(out)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
        assert r.returncode == 0, r.stdout + r.stderr
        st = json.loads(out.read_text())["client"]
        assert st["snapshots"] > 0 and st["dropped"] == 0 and st["undelivered"] == 0, st
        got[shm] = st
        with daemon.client(f"{run}-reader") as c:
            h = eventually(lambda: (lambda p: p if len(p) == 3 else None)(
                c.history("blocks.0.fc.weight", run=run, format="E3M4")["points"]),
                what="three snapshots")
            got[shm + "points"] = [(p["step"], p["total"], p["stalled"]) for p in h]
    # the segment is passed to the daemon at connect (a snapshot taken before
    # the connection was up goes in its message)
    assert 0 < got["-1"]["shm_snapshots"] <= got["-1"]["snapshots"], got["-1"]
    assert got["-1"]["shm_snapshots"] >= got["-1"]["snapshots"] // 2, got["-1"]
    assert got["0"]["shm_snapshots"] == 0, got["0"]
    assert got["-1points"] == got["0points"]
