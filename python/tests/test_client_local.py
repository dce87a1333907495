"""altgrad.Client without a daemon: opening never waits but says no daemon is
there, logging validates and queues, queries fail at once naming the socket
(a silent daemon still times out), close counts what was never delivered,
misuse raises with ag_strerror text."""

import array
import os
import socket
import tempfile

import numpy as np
import pytest
import torch

from altgrad import (AltgradError, AltgradTimeoutError, Client, InvalidArgumentError,
                     TransportError)
from altgrad._arrays import f32, typed

UNWAITABLE_MS = 600000  # a query timeout no test may wait out


@pytest.fixture
def nowhere():
    """URLs where no daemon listens (a fresh temporary directory)."""
    d = tempfile.mkdtemp(prefix="agpy-none-", dir="/tmp")
    yield f"ipc://{d}/ingest.sock", f"ipc://{d}/query.sock"
    os.rmdir(d) if not os.listdir(d) else None


@pytest.fixture
def silent(nowhere):
    """URLs whose query socket listens but never answers: connections wait in
    its backlog and nobody shakes hands, as with a daemon too busy to."""
    path = nowhere[1][len("ipc://"):]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    yield nowhere
    listener.close()
    os.unlink(path)


def test_opening_does_not_wait_for_a_daemon_and_names_the_run(nowhere):
    with Client(*nowhere, run="local-1", close_timeout_ms=1) as c:
        assert c.run == "local-1" and not c.closed and c.client_id > 0
    assert c.closed
    with Client(*nowhere, close_timeout_ms=1) as c:
        assert c.run.startswith("run-")


def test_logging_queues_without_a_daemon(nowhere):
    with Client(*nowhere, run="local-2", close_timeout_ms=1) as c:
        w = torch.ones(10)
        assert c.log_update(0, "w", w, torch.full((10,), 1e-3)) is True
        assert c.log_sgd(0, "w2", np.ones(5, np.float32), np.ones(5, np.float32), 0.1)
        assert c.log_stats(0, "act", [1.0, -3.0, float("nan")])
        assert c.log_amax(0, "act2", "activation", 2.5, 100, 1)
        assert c.log_stats(0, "act3", torch.ones(4, dtype=torch.bfloat16), role="gradient")
        assert c.log_update(1, "w", w, w, scale=0.5, formats=["E5M2", "E3M4"])
        st = c.stats()
        assert st["snapshots"] == 3 and st["records"] >= 3


def test_queries_without_a_daemon_fail_at_once_naming_the_socket(nowhere):
    path = nowhere[1][len("ipc://"):]
    with Client(*nowhere, run="local-3", query_timeout_ms=UNWAITABLE_MS,
                close_timeout_ms=1) as c:
        with pytest.raises(TransportError) as e:
            c.status()
        assert isinstance(e.value, ConnectionError) and e.value.code == -14
        assert path in str(e.value) and "not found" in str(e.value)


def test_a_daemon_that_is_there_but_silent_still_times_out(silent):
    with Client(*silent, run="local-3b", query_timeout_ms=100, close_timeout_ms=1) as c:
        with pytest.raises(AltgradTimeoutError) as e:
            c.status()
        assert isinstance(e.value, TimeoutError) and e.value.code == -11
        assert "no reply" in str(e.value)


def test_opening_without_a_daemon_says_so_once_on_stderr(nowhere, capfd):
    c = Client(*nowhere, run="local-3c", close_timeout_ms=1)
    err = capfd.readouterr().err
    lines = [x for x in err.splitlines() if "no daemon" in x]
    assert len(lines) == 1, err
    assert nowhere[0][len("ipc://"):] in lines[0] and "not found" in lines[0]
    assert c.log_amax(1, "act", "activation", 1.0, 4)
    assert "no daemon" not in capfd.readouterr().err, "said more than once"
    c.close()


def test_close_returns_how_many_messages_no_daemon_confirmed(nowhere):
    c = Client(*nowhere, run="local-3d", batch_bytes=1, close_timeout_ms=50)
    for step in range(3):  # batch_bytes=1: each record is its own message
        assert c.log_amax(step, "act", "activation", 1.0, 4)
    st = c.stats()
    assert st["delivered"] == 0 and st["undelivered"] == 4  # run start + 3 batches
    with pytest.raises(TransportError, match="not found"):
        c.flush(24 * 3600 * 1000)  # no daemon: at once, saying where it looked
    assert c.close() == 5, "run start, three batches and run end"
    assert c.close() == 5, "close is idempotent and keeps its answer"


def test_leaving_a_with_block_says_what_was_never_delivered(nowhere, capfd):
    with Client(*nowhere, run="local-3e", close_timeout_ms=1) as c:
        assert c.log_amax(1, "act", "activation", 1.0, 4)
    err = capfd.readouterr().err
    assert "3 messages of run local-3e were never confirmed" in err, err


def test_a_client_that_logged_nothing_has_nothing_undelivered(nowhere):
    c = Client(*nowhere, run="local-3f", close_timeout_ms=UNWAITABLE_MS)
    assert c.close() == 0


def test_misuse_raises(nowhere):
    with Client(*nowhere, run="local-4", close_timeout_ms=1) as c:
        with pytest.raises(ValueError):
            c.log_update(0, "w", torch.ones(3), torch.ones(4))
        with pytest.raises(ValueError):
            c.log_update(0, "w", torch.ones(0), torch.ones(0))
        with pytest.raises(ValueError):
            c.log_update(0, "x" * 256, torch.ones(3), torch.ones(3))
        with pytest.raises(ValueError):
            c.log_update(-1, "w", torch.ones(3), torch.ones(3))
        with pytest.raises(ValueError):
            c.log_stats(0, "a", torch.ones(3), role="bias")
        with pytest.raises(TypeError):
            c.log_stats(0, "a", "not an array")
        with pytest.raises(InvalidArgumentError):
            c.log_sgd(0, "w", torch.ones(3), torch.ones(3), float("nan"))
        with pytest.raises(AltgradError) as e:
            c.log_update(0, "w", torch.ones(3), torch.ones(3), formats=["E9M9"])
        assert e.value.code == -3
        with pytest.raises(ValueError):
            c.log_update(0, "w", torch.ones(3), torch.ones(3), scale=-1.0)
        c.end_run()
        with pytest.raises(AltgradError) as e:
            c.log_update(0, "w", torch.ones(3), torch.ones(3))
        assert e.value.code == -12
    with pytest.raises(AltgradError):
        c.log_amax(0, "a", "activation", 1.0, 1)
    with pytest.raises(TypeError):
        Client(*nowhere, bogus=1)
    with pytest.raises(ValueError):
        Client(*nowhere, policy="maybe")
    with pytest.raises(InvalidArgumentError):
        Client(*nowhere, metadata="[1, 2]")


def test_contiguous_float32_memory_is_passed_without_a_copy():
    t = torch.arange(6, dtype=torch.float32)
    assert f32(t).ptr == t.data_ptr() and not f32(t).copied
    a = np.arange(6, dtype=np.float32)
    assert f32(a).ptr == a.ctypes.data and not f32(a).copied
    b = array.array("f", [1.0, 2.0])
    assert f32(b).ptr == b.buffer_info()[0]
    assert f32(t[::2]).copied and f32(a.astype(np.float64)).copied
    h = torch.ones(4, dtype=torch.float16)
    assert typed(h).ptr == h.data_ptr() and typed(h).dtype == 2
    assert typed(torch.ones(2, dtype=torch.bfloat16)).dtype == 1


def test_a_query_in_one_thread_does_not_hold_up_logging_in_another(silent, monkeypatch):
    import threading
    from altgrad import _lib
    in_query, query_done = threading.Event(), threading.Event()
    real_func = _lib.func

    def spying_func(name):
        fn = real_func(name)
        if name != "ag_client_status":
            return fn

        def call(*args):
            in_query.set()  # the query is about to wait on the (silent) daemon
            return fn(*args)
        return call

    monkeypatch.setattr(_lib, "func", spying_func)
    outcome = []
    with Client(*silent, run="local-5", query_timeout_ms=3000, close_timeout_ms=1) as c:
        def ask():
            try:
                c.status()
            except AltgradError as e:
                outcome.append(type(e))
            query_done.set()

        th = threading.Thread(target=ask)
        th.start()
        assert in_query.wait(10)
        assert c.log_amax(1, "act", "activation", 1.0, 4)
        assert c.stats()["records"] == 1
        assert not query_done.is_set(), "logging waited for the query's timeout"
        th.join()
    assert outcome == [AltgradTimeoutError], "the query did not wait for the silent daemon"


def test_an_error_outside_queries_does_not_quote_an_earlier_query_failure(nowhere):
    with Client(*nowhere, run="local-6", query_timeout_ms=50, close_timeout_ms=1) as c:
        with pytest.raises(TransportError) as e:
            c.runs()
        assert "not found" in str(e.value)
        assert c.log_amax(1, "act", "activation", 1.0, 4)
        with pytest.raises(InvalidArgumentError) as e:
            c.log_amax(1, "act", "activation", float("nan"), 4)  # refused before queueing
        assert "not found" not in str(e.value)


def test_close_wakes_a_thread_blocked_on_a_full_queue(nowhere):
    import threading
    c = Client(*nowhere, run="local-7", policy="block", queue_messages=1, batch_bytes=1,
               close_timeout_ms=1)
    errors = []

    def produce():
        try:
            for step in range(1000):
                c.log_amax(step, "act", "activation", 1.0, 4)
        except AltgradError as e:
            errors.append(e.code)

    th = threading.Thread(target=produce)
    th.start()
    import time
    for _ in range(1000):  # run_start fills the queue: the first batch waits
        st = c.stats()
        if st["queued"] >= 1 and st["records"] >= 1:
            break
        time.sleep(0.01)
    assert th.is_alive(), "with no daemon the producer cannot have finished"
    c.close()
    th.join(10)
    assert not th.is_alive(), "the producer is still blocked after close"
    assert errors == [-12]


def test_a_forked_child_is_refused_and_exits_cleanly(nowhere):
    c = Client(*nowhere, run="local-8", close_timeout_ms=1)
    assert c.log_amax(1, "act", "activation", 1.0, 4)
    pid = os.fork()
    if pid == 0:  # the child (a DataLoader worker, say)
        code = 1
        try:
            c.log_amax(2, "act", "activation", 1.0, 4)
        except AltgradError as e:
            code = 0 if e.code == -12 and "fork" in str(e) else 2
        try:
            c.close()
            del c
        except BaseException:
            code = 3
        os._exit(code)
    import time
    for _ in range(1000):
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung")
    assert os.WIFEXITED(status), f"the child died of signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0
    assert c.log_amax(2, "act", "activation", 1.0, 4), "the parent's client still works"
    assert c.stats()["records"] == 2
    c.close()
