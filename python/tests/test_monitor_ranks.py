"""altgrad.torch.Monitor under torch.distributed: two processes (gloo, CPU)
as ranks 0 and 1 (dist_worker.py). With parameters sharded by hand, each
rank counts its shard at the whole tensor's scale (its amax all-reduced), and
the counts of the shards add up to those of the gathered whole tensors; with
DDP the replicated tensors are logged once, by rank 0. First through a client
that records what the Monitor sends, then against the real daemon, which adds
the shards up: its stored points are the whole tensors', with `ranks`. All
scenarios run in one launch of the two processes (starting torch is slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

from daemon_fixture import eventually

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")
FORMATS = ["E0M7", "E1M6", "E3M4", "E5M2", "E7M0"]
KEYS = ("stalled", "total", "overflow", "underflow", "nonfinite")
WORLD = 2
TIMEOUT = 240  # seconds for all: each scenario trains 8 steps of a tiny MLP


SCENARIOS = {
    "shard-device": {"mode": "shard", "compute": "device", "client": "fake"},
    "shard-snapshots": {"mode": "shard", "compute": "daemon", "client": "fake",
                        "activations": True, "gradients": True},
    "ddp-device": {"mode": "ddp", "compute": "device", "client": "fake"},
    "dtensor-device": {"mode": "dtensor", "compute": "device", "client": "fake"},
    # against the real daemon: it adds the shards up (counts and snapshots)
    "shard-device-daemon": {"mode": "shard", "compute": "device", "client": "daemon",
                            "flips": True},
    "shard-snapshots-daemon": {"mode": "shard", "compute": "daemon", "client": "daemon"},
    "ddp-device-daemon": {"mode": "ddp", "compute": "device", "client": "daemon"},
}


def run_ranks(tmp, scenarios, daemon):
    """Run dist_worker.py as ranks 0..WORLD-1, once for all scenarios
    (starting torch is the slow part); returns {scenario: (per-rank
    results, expected rows from rank 0)}. Fails the test on a non-zero exit
    or a timeout (every rank is killed)."""
    runs = []
    for name, sc in scenarios.items():
        runs.append(dict({"steps": 8, "every": 2, "formats": FORMATS,
                          "out": os.path.join(tmp, name), "run": f"ranks-{name}",
                          "launch": f"launch-{name}", "ingest": daemon.ingest,
                          "query": daemon.query}, **sc))
    cfg = {"init": f"file://{os.path.join(tmp, 'rendezvous')}", "runs": runs}
    env = dict(os.environ, WORLD_SIZE=str(WORLD), GLOO_SOCKET_IFNAME="lo",
               OMP_NUM_THREADS="1")
    for k in ("TORCHELASTIC_RUN_ID", "ALTGRAD_LAUNCH_ID", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    procs, logs = [], []
    for r in range(WORLD):
        log = open(os.path.join(tmp, f"rank{r}.log"), "w+")
        logs.append(log)
        procs.append(subprocess.Popen([sys.executable, WORKER, json.dumps(cfg)],
                                      env=dict(env, RANK=str(r)), stdout=log,
                                      stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT
    try:
        # until all exit, one fails (the other would wait in a collective) or time is up
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read()[-3000:])
        log.close()
    for r, p in enumerate(procs):
        assert p.returncode == 0, f"rank {r} exited {p.returncode}:\n" + "\n".join(texts)
    got = {}
    for name in scenarios:
        out = os.path.join(tmp, name)
        ranks = []
        for r in range(WORLD):
            with open(f"{out}.rank{r}.json") as f:
                ranks.append(json.load(f))
        with open(f"{out}.expected.json") as f:
            got[name] = (ranks, json.load(f))
    return got


@pytest.fixture(scope="module")
def runs(daemon):
    with tempfile.TemporaryDirectory(prefix="agranks-", dir="/tmp") as d:
        yield run_ranks(d, SCENARIOS, daemon)


def by_key(rows):
    return {(r["tensor"], r["step"], r["format"]): r for r in rows}


def test_sharded_tensors_counted_on_each_rank_add_up_to_the_whole_tensors(runs):
    ranks, expected = runs["shard-device"]
    exp = by_key(expected)
    assert {k[0] for k in exp} == {"w1", "b1", "w2", "b2"} and len({k[1] for k in exp}) == 4
    for r, res in enumerate(ranks):
        rep = res["report"]
        assert (rep["rank"], rep["world_size"]) == (r, WORLD)
        # w1, b1, w2 are shards (one all-reduce per sampled step); b2 is replicated
        assert rep["sharded"] == 3 and rep["replicated"] == 1
        assert rep["collectives"] == 4 and rep["collective_seconds"] > 0
    summed = {}
    for r, res in enumerate(ranks):
        for row in res["counts"]:
            key = (row["tensor"], row["step"], row["format"])
            if row["tensor"] == "b2":
                assert r == 0 and row["replicated"] is True
            else:
                assert row["replicated"] is False
                # every rank used the whole tensor's amax and scale
                assert row["amax"] == pytest.approx(exp[key]["amax"], rel=0, abs=0)
                assert row["scale"] == exp[key]["scale"], key
            acc = summed.setdefault(key, {"counts": [0] * 5, "numel": 0, "ranks": 0})
            acc["counts"] = [a + b for a, b in zip(acc["counts"], row["counts"])]
            acc["numel"] += row["numel"]
            acc["ranks"] += 1
    assert summed.keys() == exp.keys()
    for key, e in exp.items():
        got = summed[key]
        assert got["counts"] == e["counts"], key
        assert got["numel"] == e["numel"], key
        assert got["ranks"] == (1 if key[0] == "b2" else WORLD), key
    # the shards' scales differ from what each rank's own amax would give
    # (rank 1 holds the larger half): the all-reduce mattered
    stalled = [e["counts"][0] for e in expected]
    assert sum(stalled) > 0 and any(e["counts"][0] < e["counts"][1] for e in expected)


def test_sharded_tensors_go_as_whole_local_shards_on_the_snapshot_path(runs):
    ranks, _ = runs["shard-snapshots"]
    sizes = {"w1": 8 * 6, "b1": 8, "w2": 4 * 8, "b2": 4}
    for r, res in enumerate(ranks):
        snaps = res["snapshots"]
        assert res["report"]["collectives"] == 0
        assert {s["tensor"] for s in snaps} == (set(sizes) if r == 0 else set(sizes) - {"b2"})
        for s in snaps:
            assert s["n"] == sizes[s["tensor"]] and s["numel"] is None
            assert s["replicated"] is (s["tensor"] == "b2")
        grads = {s["tensor"] for s in res["stats"] if s["tensor"].endswith(".grad")}
        assert grads == ({"w1.grad", "b1.grad", "w2.grad", "b2.grad"} if r == 0
                         else {"w1.grad", "b1.grad", "w2.grad"})


def test_dtensor_parameters_are_counted_on_their_local_shards(runs):
    """Parameters answering like DTensors (to_local, placements, device_mesh):
    Shard ones counted on each rank's rows at the whole tensor's scale, the
    Replicate one by rank 0 alone."""
    ranks, expected = runs["dtensor-device"]
    exp = by_key(expected)
    for r, res in enumerate(ranks):
        assert res["report"]["sharded"] == 3 and res["report"]["replicated"] == 1
        assert res["report"]["collectives"] == 4
    summed = {}
    for r, res in enumerate(ranks):
        for row in res["counts"]:
            key = (row["tensor"], row["step"], row["format"])
            assert row["replicated"] is (row["tensor"] == "2.bias")
            assert r == 0 or row["tensor"] != "2.bias"
            assert row["scale"] == exp[key]["scale"], key
            acc = summed.setdefault(key, [0] * 6)
            summed[key] = [a + b for a, b in zip(acc, row["counts"] + [row["numel"]])]
    assert summed.keys() == exp.keys()
    for key, e in exp.items():
        assert summed[key] == e["counts"] + [e["numel"]], key


def test_ddp_parameters_are_logged_once_by_rank_0(runs):
    ranks, expected = runs["ddp-device"]
    exp = by_key(expected)
    assert ranks[1]["counts"] == []
    assert {r["report"]["collectives"] for r in ranks} == {0}
    assert ranks[0]["report"]["replicated"] == 4 and ranks[1]["report"]["replicated"] == 4
    got = by_key(ranks[0]["counts"])
    assert got.keys() == exp.keys()
    for key, e in exp.items():
        assert got[key]["counts"] == e["counts"], key
        assert got[key]["scale"] == e["scale"], key
        assert got[key]["replicated"] is True


def stored(c, run, expected):
    """The daemon's points of run for every expected (tensor, step, format)."""
    got = {}
    for name in sorted({e["tensor"] for e in expected}):
        for fmt in FORMATS:
            for p in c.history(name, run=run, format=fmt)["points"]:
                got[name, p["step"], fmt] = p
    return got


@pytest.mark.parametrize("scenario", ["shard-device-daemon", "shard-snapshots-daemon"])
def test_the_daemon_stores_the_whole_tensors_counts_from_two_ranks_shards(runs, daemon,
                                                                          scenario):
    """Counted on the ranks (counts messages) or by the daemon from the
    ranks' snapshots: every stored point is the gathered whole tensor's, with
    2 ranks (1 for the replicated bias), complete."""
    ranks, expected = runs[scenario]
    for res in ranks:
        assert res["report"]["flushed"] is True and res["report"]["undelivered"] == 0
    exp = by_key(expected)
    with daemon.client("ranks-checker") as c:
        # every message was confirmed; a step's last shard may still be evaluating
        got = eventually(lambda: (lambda g: g if g.keys() == exp.keys() else None)(
            stored(c, f"ranks-{scenario}", expected)), what="every point of the run")
        for key, e in exp.items():
            p = got[key]
            assert [p[k] for k in KEYS] == e["counts"], key
            assert p["scale"] == e["scale"], key
            assert p["ranks"] == (1 if key[0] == "b2" else WORLD), key
            assert p["complete"], key
        numel = {t["name"]: t["numel"] for t in c.tensors(f"ranks-{scenario}")["tensors"]}
        assert numel["w1"] == 16 * 6 and numel["w2"] == 4 * 16 and numel["b2"] == 4


def test_shards_counted_on_the_ranks_and_by_the_daemon_store_the_same_points(runs, daemon):
    """One training counted on the ranks (with flips) and sent as snapshot
    shards: the daemon stores the same amax, scales, counts, flips, ranks and
    completeness for every tensor, step and format; only "computed" differs,
    and the quantization error, which the ranks compute on their shards and
    the daemon combines: equal up to the rounding of its sums."""
    _, expected = runs["shard-device-daemon"]
    got = {}
    with daemon.client("ranks-checker") as c:
        for scenario in ("shard-device-daemon", "shard-snapshots-daemon"):
            got[scenario] = eventually(
                lambda: (lambda g: g if len(g) == len(expected) else None)(
                    stored(c, f"ranks-{scenario}", expected)), what="every point")
    dev, snap = got["shard-device-daemon"], got["shard-snapshots-daemon"]
    assert dev.keys() == snap.keys()
    moved = 0
    for key, a in dev.items():
        b = snap[key]
        assert a["computed"] == "device" and b["computed"] == "daemon", key
        # the quantization error: the shards' combined by the daemon
        assert b["mse"] is not None and a["mse"] == pytest.approx(b["mse"], rel=1e-9), key
        if b["sqnr_db"] is None:
            assert a["sqnr_db"] is None, key
        else:
            assert a["sqnr_db"] == pytest.approx(b["sqnr_db"], abs=1e-6), key
        differ = ("computed", "mse", "sqnr_db")
        assert ({k: v for k, v in a.items() if k not in differ}
                == {k: v for k, v in b.items() if k not in differ}), key
        moved += a["flips"] or 0
    assert moved > 0  # flips were compared, shard by shard, at the whole tensor's scales


def test_the_daemon_stores_ddp_tensors_once(runs, daemon):
    ranks, expected = runs["ddp-device-daemon"]
    exp = by_key(expected)
    with daemon.client("ranks-checker") as c:
        got = eventually(lambda: (lambda g: g if g.keys() == exp.keys() else None)(
            stored(c, "ranks-ddp-device-daemon", expected)), what="every point of the run")
        for key, e in exp.items():
            p = got[key]
            assert [p[k] for k in KEYS] == e["counts"], key
            assert p["scale"] == e["scale"] and p["ranks"] == 1, key
        numel = {t["name"]: t["numel"]
                 for t in c.tensors("ranks-ddp-device-daemon")["tensors"]}
        assert numel["module.0.weight"] == 16 * 6
