"""altgrad.Client's place in a distributed job: rank and world_size given, or
taken from torchrun's $RANK / $WORLD_SIZE, checked at open (a bad value fails
with the reason); the replicated keyword of the logging calls is validated
and queued. The daemon's side (shards summed, replicated counted once) is
tests/daemon/test_ranks.c."""

import os
import tempfile

import numpy as np
import pytest

from altgrad import Client, InvalidArgumentError


@pytest.fixture
def nowhere():
    d = tempfile.mkdtemp(prefix="agpy-ranks-", dir="/tmp")
    yield f"ipc://{d}/ingest.sock", f"ipc://{d}/query.sock"
    os.rmdir(d) if not os.listdir(d) else None


@pytest.fixture
def no_torchrun_env(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return monkeypatch


def test_a_client_without_rank_is_rank_0_of_1(nowhere, no_torchrun_env):
    with Client(*nowhere, run="ranks-1", close_timeout_ms=1) as c:
        assert (c.rank, c.world_size) == (0, 1)


def test_rank_and_world_size_given_are_kept(nowhere, no_torchrun_env):
    no_torchrun_env.setenv("RANK", "5")
    no_torchrun_env.setenv("WORLD_SIZE", "8")
    with Client(*nowhere, run="ranks-2", rank=1, world_size=2, close_timeout_ms=1) as c:
        assert (c.rank, c.world_size) == (1, 2), "given values win over the environment"


def test_rank_and_world_size_come_from_torchrun_environment(nowhere, no_torchrun_env):
    no_torchrun_env.setenv("RANK", "3")
    no_torchrun_env.setenv("WORLD_SIZE", "4")
    with Client(*nowhere, run="ranks-3", close_timeout_ms=1) as c:
        assert (c.rank, c.world_size) == (3, 4)


@pytest.mark.parametrize("rank, world, why", [
    ("x", "4", "$RANK"), ("4", "4", "$RANK"), ("-1", "4", "$RANK"), (None, "4", "$RANK"),
    ("0", "0", "$WORLD_SIZE"), ("0", "65537", "$WORLD_SIZE"), ("0", "2 ", "$WORLD_SIZE"),
])
def test_garbage_in_the_environment_fails_open_saying_which(nowhere, no_torchrun_env, rank,
                                                           world, why):
    if rank is not None:
        no_torchrun_env.setenv("RANK", rank)
    no_torchrun_env.setenv("WORLD_SIZE", world)
    with pytest.raises(InvalidArgumentError, match=f"\\{why}"):
        Client(*nowhere, run="ranks-4", close_timeout_ms=1)


@pytest.mark.parametrize("rank, world", [(2, 2), (-1, 2), (0, 0), (0, 65537)])
def test_bad_rank_or_world_size_is_refused(nowhere, no_torchrun_env, rank, world):
    with pytest.raises(ValueError):
        Client(*nowhere, run="ranks-5", rank=rank, world_size=world, close_timeout_ms=1)


def test_rank_needs_world_size(nowhere, no_torchrun_env):
    with pytest.raises(ValueError, match="together"):
        Client(*nowhere, run="ranks-6", rank=1, close_timeout_ms=1)


def test_replicated_is_accepted_by_every_logging_call(nowhere, no_torchrun_env):
    w = np.ones(16, dtype=np.float32)
    g = np.full(16, 1e-3, dtype=np.float32)
    with Client(*nowhere, run="ranks-7", rank=0, world_size=2, close_timeout_ms=1) as c:
        assert c.log_sgd(0, "a", w, g, 0.1, replicated=True)
        assert c.log_update(0, "b", w, g, replicated=True)
        assert c.log_snapshot(0, "c", w, g, lr=0.1, replicated=False)
        counts = np.zeros((2, 1, 5), dtype=np.uint64)
        for repl in (True, False, [True, False]):
            assert c.log_counts(1, ["a", "b"], ["E5M2"], counts, [1.0, 1.0], [1.0, 1.0],
                                [16, 16], [0, 0], replicated=repl)
        with pytest.raises(ValueError):
            c.log_counts(1, ["a", "b"], ["E5M2"], counts, [1.0, 1.0], [1.0, 1.0], [16, 16],
                         [0, 0], replicated=[True])
        with pytest.raises(ValueError):
            c.log_sgd(0, "a", w, g, 0.1, replicated="yes")
        assert c.stats()["snapshots"] == 3


def test_two_ranks_halves_are_one_tensor_in_history_and_runs(daemon, no_torchrun_env):
    """Two clients of one launch as ranks 0 and 1 of 2 each log half of a
    tensor: history has one point per step with ranks 2, complete, counting
    the whole tensor (twice the elements of one half)."""
    from daemon_fixture import eventually
    w = np.linspace(-1, 1, 200, dtype=np.float32)
    g = np.full(200, 1e-3, dtype=np.float32)
    clients = [daemon.client("py-ranks", launch_id="py-ranks-launch", rank=r, world_size=2)
               for r in (0, 1)]
    try:
        for step in range(3):
            for r, c in enumerate(clients):
                half = slice(100 * r, 100 * (r + 1))
                assert c.log_sgd(step, "fc.weight", w[half], g[half], 0.1)
            c.log_sgd(step, "fc.bias", w[:10], g[:10], 0.1, replicated=True)
            clients[0].log_sgd(step, "fc.bias", w[:10], g[:10], 0.1, replicated=True)
        for c in clients:
            c.flush(20000)
    finally:
        for c in clients:
            c.close()
    with daemon.client("py-ranks-reader") as q:
        pts = eventually(lambda: (lambda p: p if len(p) >= 3 else None)(
            q.history("fc.weight", run="py-ranks")["points"]), what="3 points")
        assert [p["ranks"] for p in pts] == [2, 2, 2]
        assert [p["complete"] for p in pts] == [1, 1, 1]
        assert all(p["total"] == 200 for p in pts), "the whole tensor's elements"
        bias = q.history("fc.bias", run="py-ranks")["points"]
        assert [(p["ranks"], p["total"]) for p in bias] == [(1, 10)] * 3, "replicated: once"
        (run,) = [r for r in q.runs()["runs"] if r["name"] == "py-ranks"]
        assert (run["world_size"], run["ranks_seen"], run["incomplete"]) == (2, 2, 0)
        assert run["rank_drops"] == "{}"
