"""altgrad.Client against a real altgradd (temporary sockets and database):
what is logged comes back through every query, the daemon's stall counts
agree with the Python API's, and errors arrive as exceptions."""

import json

import numpy as np
import pytest
import torch

from altgrad import NotFoundError, _lib
from altgrad.quantization import (FORMAT_REGISTRY, compute_scale, detect_bit_stall_update,
                                  stall_counts)
from daemon_fixture import eventually

FORMATS = ["E0M7", "E1M6", "E3M4", "E5M2", "E7M0"]


def history_points(c, tensor, n, **kw):
    return eventually(lambda: (lambda h: h if len(h["points"]) >= n else None)(
        c.history(tensor, **kw)), what=f"{n} history points of {tensor}")["points"]


def test_status_describes_the_daemon(daemon):
    with daemon.client("status-run") as c:
        st = c.status()
    assert st["version"] == "0.2.0"
    assert st["db_path"] == daemon.db
    assert st["formats"].split(",") == FORMATS
    assert st["uptime_s"] > 0
    # its clients' shared memory: counters, 0 or more
    for k in ("shm_segments", "shm_passed", "shm_snapshots", "shm_refused"):
        assert isinstance(st[k], int) and st[k] >= 0, k


def test_status_counts_the_snapshots_read_from_shared_memory(daemon):
    with daemon.client("status-shm", policy="block") as c:
        w = np.linspace(-1, 1, 1 << 16, dtype=np.float32)
        g = np.full(1 << 16, 1e-3, dtype=np.float32)
        for step in range(8):  # the first may go before the daemon maps the segment
            assert c.log_sgd(step, "w", w, g, 0.01)
        c.flush()
        history_points(c, "w", 8, format="E5M2")
        mine = c.stats()["shm_snapshots"]
        st = c.status()
    assert mine > 0, "no snapshot went through shared memory"
    assert st["shm_snapshots"] >= mine
    assert st["shm_segments"] >= 1 and st["shm_refused"] == 0


def test_seed_check_comes_back_as_a_stall_rate_of_one(daemon):
    with daemon.client("seed-check") as c:
        w = torch.ones(100)
        g = torch.full((100,), 1e-4)
        for step in range(3):
            assert c.log_sgd(step, "w", w, g, 0.01)
        c.flush()
        pts = history_points(c, "w", 3, format="E5M2")
    assert [p["step"] for p in pts] == [0, 1, 2]
    assert all(p["stalled"] == 100 and p["total"] == 100 and p["stall_rate"] == 1.0
               for p in pts)


@pytest.mark.parametrize("form", ["sgd", "update"])
def test_daemon_counts_agree_with_the_python_api_in_every_format(daemon, form):
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(4096, generator=gen)
    g = torch.randn(4096, generator=gen) * 10.0 ** torch.randint(-8, 0, (4096,), generator=gen)
    lr, scale = 0.01, 0.003
    run = f"agree-{form}"
    with daemon.client(run) as c:
        if form == "sgd":
            c.log_sgd(5, "layer.weight", w, g, lr, scale=scale, formats=FORMATS)
        else:
            c.log_update(5, "layer.weight", w, -lr * g, scale=scale, formats=FORMATS)
        c.flush()
        for fmt in FORMATS:
            (p,) = history_points(c, "layer.weight", 1, format=fmt)
            if form == "sgd":
                want = stall_counts(w, g, lr, FORMAT_REGISTRY[fmt], scale)
            else:
                want = stall_counts(w, -lr * g, 0, FORMAT_REGISTRY[fmt], scale, update=True)
            got = {k: p[k] for k in ("stalled", "total", "overflow", "underflow", "nonfinite")}
            assert got == want, fmt
            assert p["scale"] == pytest.approx(scale)
            assert p["amax"] == pytest.approx(float(w.abs().max()))


def test_a_flush_means_the_daemon_stored_it_and_close_reports_nothing_undelivered(daemon):
    c = daemon.client("delivery-run")
    for step in range(5):
        assert c.log_update(step, "w", torch.ones(32), torch.full((32,), 1e-3))
        assert c.log_amax(step, "act", "activation", 2.0, 64)
    c.end_run()
    c.flush(30000)  # raises unless the daemon confirmed every message
    st = c.stats()
    assert st["dropped"] == 0 and st["sent"] > 5
    assert st["delivered"] == st["sent"] and st["undelivered"] == 0
    # stored means queryable: no waiting for a commit after a confirmed flush
    assert {t["name"] for t in c.tensors()["tensors"]} == {"w", "act"}
    assert c.close() == 0


def test_statistics_show_up_as_tensors_with_their_roles(daemon):
    x = np.array([0.5, -4.0, np.nan, 2.0], dtype=np.float32)
    with daemon.client("stats-run") as c:
        c.log_stats(3, "block.out", x, role="activation")
        c.log_amax(3, "block.grad", "gradient", 7.5, 1000, 0)
        c.log_update(3, "block.weight", torch.ones(8), torch.full((8,), 0.5))
        c.flush()
        doc = eventually(lambda: (lambda d: d if len(d["tensors"]) == 3 else None)(
            c.tensors()), what="three tensors")
    assert doc["run"] == "stats-run"
    ts = doc["tensors"]
    by = {t["name"]: t for t in ts}
    assert by["block.out"]["role"] == "activation"
    assert by["block.out"]["last_amax"] == 4.0 and by["block.out"]["numel"] == 4
    assert by["block.grad"]["role"] == "gradient" and by["block.grad"]["last_amax"] == 7.5
    assert by["block.weight"]["snapshots"] == 1
    assert all(t["first_step"] == 3 == t["last_step"] for t in ts)


def test_top_puts_the_most_stalled_tensor_first(daemon):
    with daemon.client("top-run") as c:
        w = torch.linspace(-1.0, 1.0, 64)
        u = -0.25 * torch.sign(w)  # toward zero: no saturation at the scale's max
        for step in range(4):
            c.log_update(step, "frozen", w, torch.full((64,), 1e-6))
            c.log_update(step, "moving", w, u)
        c.flush()
        top = eventually(lambda: (lambda t: t if t["to_step"] == 3 and len(t["tensors"]) == 2
                                  and all(e["steps"] == 4 for e in t["tensors"]) else None)(
            c.top(format="E3M4")), what="top over four steps")
        assert [e["tensor"] for e in top["tensors"]] == ["frozen", "moving"]
        scale = compute_scale(1.0, FORMAT_REGISTRY["E3M4"])  # the daemon's, from amax 1
        stalled, total = detect_bit_stall_update(w, u, FORMAT_REGISTRY["E3M4"], scale)
        assert top["tensors"][0]["stall_rate"] == 1.0
        assert (top["tensors"][1]["stalled"], top["tensors"][1]["total"]) == (4 * stalled,
                                                                           4 * total)
        assert stalled < total
        assert top["format"] == "E3M4" and top["from_step"] == 0
        recent = c.top(format="E3M4", window=2, limit=1)
        assert len(recent["tensors"]) == 1 and recent["tensors"][0]["steps"] == 2


def test_report_gives_every_tensor_and_format_with_a_sparkline(daemon):
    with daemon.client("report-run") as c:
        w = torch.linspace(-1.0, 1.0, 64)
        for step in range(4):
            c.log_update(step, "frozen", w, torch.full((64,), 1e-6))
        c.flush()
        rep = eventually(lambda: (lambda r: r if r["rows"] and r["rows"][0]["steps"] == 4
                                  else None)(c.report(formats="E3M4,E5M2", width=2)),
                         what="report over four steps")
        assert rep["run"] == "report-run"
        assert [(r["tensor"], r["format"]) for r in rep["rows"]] == [("frozen", "E3M4"),
                                                                     ("frozen", "E5M2")]
        row = rep["rows"][0]
        assert row["last_rate"] == row["mean_rate"] == row["max_rate"] == 1.0
        assert row["sparkline"] == "\u2588\u2588"  # two columns, both fully stalled
        with pytest.raises(NotFoundError):
            c.report(formats="NOPE")


def test_scales_follow_the_weights_amax(daemon):
    with daemon.client("scales-run") as c:
        c.log_update(0, "big", torch.full((16,), 124.0), torch.ones(16))
        c.log_update(0, "small", torch.full((16,), 0.5), torch.ones(16))
        c.flush()
        sc = eventually(lambda: (lambda s: s if len(s["scales"]) == 2 else None)(
            c.scales(format="E3M4")), what="two scales")
    by = {s["tensor"]: s for s in sc["scales"]}
    assert sc["format"] == "E3M4" and sc["run"] == "scales-run"
    assert by["big"]["scale"] == pytest.approx(1.0) and by["big"]["amax"] == 124.0
    assert by["small"]["scale"] == pytest.approx(0.5 / 124.0)


def test_history_can_be_cut_and_downsampled(daemon):
    with daemon.client("range-run") as c:
        for step in range(6):
            c.log_update(step, "w", torch.ones(10), torch.full((10,), 1e-6))
        c.flush()
        history_points(c, "w", 6)
        cut = c.history("w", from_step=2, to_step=4)["points"]
        assert [p["step"] for p in cut] == [2, 3, 4]
        down = c.history("w", every=3)["points"]
        assert [p["step"] for p in down] == [2, 5]
        assert down[0]["total"] == 30 and down[0]["stalled"] == 30


def test_runs_carry_metadata_and_end(daemon):
    meta = {"model": "tiny", "lr": 0.01}
    from altgrad import Client
    with Client(daemon.ingest, daemon.query, run="meta-run", metadata=meta) as c:
        c.log_amax(9, "a", "activation", 1.0, 1)
        c.end_run()
        c.flush()
        run = eventually(lambda: [r for r in c.runs()["runs"] if r["name"] == "meta-run"
                                  and r["ended_ms"] > 0], what="the run to end")[0]
    assert json.loads(run["metadata"]) == meta
    assert run["last_step"] == 9 and run["dropped"] == 0 and run["pid"] > 0
    assert run["started_ms"] <= run["ended_ms"]


def test_unknown_names_raise_not_found_with_the_daemons_text(daemon):
    with daemon.client("nf-run") as c:
        with pytest.raises(NotFoundError) as e:
            c.tensors(run="no-such-run")
        assert e.value.code == -13
        assert str(e.value).startswith(_lib.strerror(-13))  # ag_strerror text first
        assert "no-such-run" in str(e.value)  # then the daemon's own message
        with pytest.raises(LookupError):
            c.history("nothing", run="no-such-run")
        with pytest.raises(LookupError):
            c.top(run="no-such-run")
