"""A run is its name plus a launch, through altgrad.Client against a real
altgradd: the same name twice gives two runs (name, name.2), each with its own
points; resume=True continues one run; two clients of one launch share it;
after a daemon restart the renaming goes on from the database."""

import pytest
import torch

from altgrad import Client
from daemon_fixture import Daemon, eventually


def first_trainer(c, start=0, steps=10):
    """The README's first trainer: every update of w = 1 is lost in E5M2."""
    w, g = torch.ones(100), torch.full((100,), 1e-4)
    for step in range(start, start + steps):
        assert c.log_sgd(step, "fc.weight", w, g, 0.01)
    name = c.start_run(timeout_ms=20000)
    c.flush(20000)
    return name


def points_and_snapshots(c, run, n):
    """History points of fc.weight (waiting for n) and the snapshots `tensors` counts."""
    pts = eventually(lambda: (lambda h: h if len(h) >= n else None)(
        c.history("fc.weight", run=run)["points"]), what=f"{n} points of {run}")
    (t,) = [t for t in c.tensors(run=run)["tensors"] if t["name"] == "fc.weight"]
    return pts, t["snapshots"]


def test_the_same_name_twice_gives_two_runs_each_with_its_own_points(daemon):
    with daemon.client("py-first") as a:
        assert a.run == "py-first"
        assert first_trainer(a) == "py-first"
    with daemon.client("py-first") as b:
        assert b.run == "py-first", "the name asked for until the daemon says"
        assert first_trainer(b) == "py-first.2"
        assert b.run == "py-first.2"
        # queries about this client's own run go to the renamed run
        assert b.tensors()["run"] == "py-first.2"
        pts_b, snaps_b = points_and_snapshots(b, None, 10)
    assert b.run == "py-first.2", "the name is kept after close"
    with daemon.client("reader") as c:
        pts_a, snaps_a = points_and_snapshots(c, "py-first", 10)
        runs = {r["name"]: r for r in c.runs()["runs"]}
    assert len(pts_a) == snaps_a == 10 and len(pts_b) == snaps_b == 10
    assert all(p["stall_rate"] == 1.0 for p in pts_a + pts_b)
    assert runs["py-first"]["client_id"] == a.client_id
    assert runs["py-first.2"]["client_id"] == b.client_id


def test_resume_continues_the_newest_run_of_the_name(daemon):
    with daemon.client("py-resume") as a:
        first_trainer(a, 0)
    with daemon.client("py-resume", resume=True) as b:
        assert first_trainer(b, 10) == "py-resume"
        pts, snaps = points_and_snapshots(b, None, 20)
        assert len(pts) == snaps == 20
    with daemon.client("reader") as c:
        names = [r["name"] for r in c.runs()["runs"] if r["name"].startswith("py-resume")]
    assert names == ["py-resume"]


def test_two_clients_of_one_launch_share_the_run(daemon):
    with daemon.client("py-ddp", launch_id="job-1") as r0, \
            daemon.client("py-ddp", launch_id="job-1") as r1, \
            daemon.client("py-ddp", launch_id="job-2") as other:
        assert r0.launch_id == r1.launch_id == "job-1"
        for step in range(5):
            r0.log_amax(step, "rank0.out", "activation", 1.0, 8)
            r1.log_amax(step, "rank1.out", "activation", 1.0, 8)
        assert r0.start_run() == r1.start_run() == "py-ddp"
        assert other.start_run() == "py-ddp.2"
        r0.flush()
        r1.flush()
        doc = eventually(lambda: (lambda d: d if len(d["tensors"]) == 2 else None)(
            r1.tensors()), what="both ranks' tensors")
    assert doc["run"] == "py-ddp"
    assert [t["name"] for t in doc["tensors"]] == ["rank0.out", "rank1.out"]


def test_the_launch_id_comes_from_torchrun(daemon, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "py-rdzv-7")
    with daemon.client("py-env") as a, daemon.client("py-env") as b:
        assert a.launch_id == b.launch_id == "py-rdzv-7"
        a.log_amax(0, "x", "activation", 1.0, 1)
        b.log_amax(0, "y", "activation", 1.0, 1)
        assert a.start_run() == b.start_run() == "py-env"


def test_bad_options_are_refused(daemon):
    with pytest.raises(ValueError):
        daemon.client("x", launch_id="")
    with pytest.raises(ValueError):
        daemon.client("x", launch_id="a\nb")
    with pytest.raises(ValueError):
        daemon.client("x", launch_id="x" * 129)
    with pytest.raises(TypeError):
        daemon.client("x", launch_id=7)
    with pytest.raises(ValueError):
        daemon.client("x", resume=2)


def test_the_renaming_goes_on_from_the_database_after_a_restart():
    d = Daemon()
    try:
        d.start()
        with d.client("py-restart", launch_id="A") as a:
            assert first_trainer(a) == "py-restart"
        with d.client("py-restart", launch_id="B") as b:
            assert first_trainer(b) == "py-restart.2"
        assert d.halt() == 0
        d.start()
        with d.client("py-restart", launch_id="C") as c:
            assert first_trainer(c) == "py-restart.3"
        with d.client("py-restart", launch_id="B") as b2:  # launch B's run
            assert first_trainer(b2, 10) == "py-restart.2"
        with d.client("py-restart", resume=True) as r:   # the newest
            assert first_trainer(r, 10) == "py-restart.3"
        with Client(d.ingest, d.query) as q:
            for run in ("py-restart", "py-restart.2", "py-restart.3"):
                n = 10 if run == "py-restart" else 20
                pts, snaps = points_and_snapshots(q, run, n)
                assert len(pts) == snaps == n, run
    finally:
        d.stop()
