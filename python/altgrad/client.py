"""altgrad.Client: libaltgrad's client (ag_client_*) for Python.

Logging calls hand float32 arrays to C by address: a torch tensor or numpy
array that is already contiguous float32 on the CPU is not copied (the C
library copies it into its send queue and returns without waiting on the
daemon). Queries return plain dicts laid out exactly as the CLI's `--json`
documents (and the daemon's HTTP API): the same keys, nesting and values.
Every failure raises an AltgradError carrying the ag_strerror text (and the
daemon's message).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import sys
import threading
from ctypes import (POINTER, c_char_p, c_double, c_float, c_int, c_int64, c_size_t, c_uint64,
                    c_void_p)

from . import _lib
from ._arrays import c_array, f32, typed
from .errors import AltgradError, check, error_for

_client_p = c_void_p


class ag_client_opts(ctypes.Structure):
    _fields_ = [
        ("ingest_url", c_char_p),
        ("query_url", c_char_p),
        ("run", c_char_p),
        ("metadata", c_char_p),
        ("policy", c_int),
        ("queue_messages", c_size_t),
        ("queue_bytes", c_size_t),
        ("batch_bytes", c_size_t),
        ("flush_interval_ms", c_int),
        ("query_timeout_ms", c_int),
        ("close_timeout_ms", c_int),
        ("reconnect_ms", c_int),
        ("snapshot_every", c_uint64),
        ("sample_max", c_size_t),
        ("sample_seed", c_uint64),
        ("resume", c_int),
        ("launch_id", c_char_p),
        ("rank", c_int),
        ("world_size", c_int),
        # TLS
        ("tls_cert", c_char_p),
        ("tls_key", c_char_p),
        ("tls_ca", c_char_p),
        ("tls_server_name", c_char_p),
        ("shm_bytes", c_size_t),
    ]


class ag_snapshot(ctypes.Structure):
    _fields_ = [
        ("step", c_uint64),
        ("tensor", c_char_p),
        ("dtype", c_int),
        ("w", c_void_p),
        ("g", c_void_p),
        ("u", c_void_p),
        ("n", c_size_t),
        ("lr", c_float),
        ("scale", c_double),
        ("formats", POINTER(c_char_p)),
        ("nformats", c_size_t),
        ("numel", c_uint64),
        ("replicated", c_int),
    ]


def _none_as_nan(x):
    """A (nested) list or tuple with None (unknown) as NaN; anything else as is."""
    if isinstance(x, (list, tuple)):
        return [_none_as_nan(v) if isinstance(v, (list, tuple)) else
                (math.nan if v is None else v) for v in x]
    return x


class ag_counts_batch(ctypes.Structure):
    _fields_ = [
        ("step", c_uint64),
        ("form", c_int),
        ("ntensors", c_size_t),
        ("nformats", c_size_t),
        ("tensors", POINTER(c_char_p)),
        ("formats", POINTER(c_char_p)),
        ("numel", c_void_p),
        ("amax", c_void_p),
        ("nonfinite", c_void_p),
        ("scales", c_void_p),
        ("counts", c_void_p),
        ("flips", c_void_p),
        ("replicated", c_void_p),
        ("mse", c_void_p),
        ("sqnr_db", c_void_p),
    ]


class ag_client_stats(ctypes.Structure):
    _fields_ = [
        ("queued", c_uint64),
        ("sent", c_uint64),
        ("dropped", c_uint64),
        ("records", c_uint64),
        ("records_dropped", c_uint64),
        ("snapshots", c_uint64),
        ("skipped", c_uint64),
        ("bytes_sent", c_uint64),
        ("delivered", c_uint64),
        ("undelivered", c_uint64),
        ("shm_snapshots", c_uint64),
    ]


_WORLD_MAX = 65536  # AG_WORLD_MAX

AG_QUEUE_DROP = 0
AG_QUEUE_BLOCK = 1
_POLICIES = {"drop": AG_QUEUE_DROP, "block": AG_QUEUE_BLOCK}

_SIGNATURES = {
    "ag_client_open": (c_int, [POINTER(_client_p), POINTER(ag_client_opts)]),
    "ag_client_log_sgd": (c_int, [_client_p, c_uint64, c_char_p, c_void_p, c_void_p, c_size_t,
                                  c_float]),
    "ag_client_log_update": (c_int, [_client_p, c_uint64, c_char_p, c_void_p, c_void_p,
                                     c_size_t]),
    "ag_client_log_snapshot": (c_int, [_client_p, POINTER(ag_snapshot)]),
    "ag_client_log_stats": (c_int, [_client_p, c_uint64, c_char_p, c_int, c_void_p,
                                    c_size_t]),
    "ag_client_log_stats_typed": (c_int, [_client_p, c_uint64, c_char_p, c_int, c_int,
                                          c_void_p, c_size_t]),
    "ag_client_log_amax": (c_int, [_client_p, c_uint64, c_char_p, c_int, c_double, c_uint64,
                                   c_uint64]),
    "ag_client_log_counts": (c_int, [_client_p, POINTER(ag_counts_batch)]),
    "ag_client_end_run": (c_int, [_client_p]),
    "ag_client_flush": (c_int, [_client_p, c_int]),
    "ag_client_close": (c_int64, [_client_p]),
    "ag_client_get_stats": (c_int, [_client_p, POINTER(ag_client_stats)]),
    "ag_client_id": (c_uint64, [_client_p]),
    "ag_client_start_run": (c_int, [_client_p, c_int]),
    "ag_client_run": (c_char_p, [_client_p]),
    "ag_client_launch_id": (c_char_p, [_client_p]),
    "ag_client_rank": (c_int, [_client_p]),
    "ag_client_world_size": (c_int, [_client_p]),
    "ag_client_query_url": (c_char_p, [_client_p]),
    "ag_client_runs": (c_int, [_client_p, POINTER(POINTER(_lib.ag_run_list))]),
    "ag_client_tensors": (c_int, [_client_p, c_char_p, POINTER(POINTER(_lib.ag_tensor_list))]),
    "ag_client_history": (c_int, [_client_p, POINTER(_lib.ag_history_query),
                                  POINTER(POINTER(_lib.ag_history))]),
    "ag_client_scales": (c_int, [_client_p, c_char_p, c_char_p,
                                 POINTER(POINTER(_lib.ag_scale_list))]),
    "ag_client_top": (c_int, [_client_p, c_char_p, c_char_p, c_uint64, c_size_t,
                              POINTER(POINTER(_lib.ag_top_list))]),
    "ag_client_status": (c_int, [_client_p, POINTER(POINTER(_lib.ag_status))]),
    "ag_client_report": (c_int, [_client_p, c_char_p, c_char_p, c_size_t,
                                 POINTER(POINTER(_lib.ag_report))]),
    "ag_client_last_error": (c_char_p, [_client_p]),
}

_declared = False
_declare_lock = threading.Lock()

# Bumped in a fork() child. A Client opened before the fork belongs to the
# parent: in the child it refuses every call (the C library does the same)
# and close() only forgets it, without touching locks a parent thread may
# have held at the fork.
_fork_generation = 0


def _forked():
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)

# How long close() lets calls already in flight finish before it frees the
# handle; calls that wait inside the C library (a full queue under "block", a
# query, a flush) are woken by the C close itself and leave with an error.
_CLOSE_GRACE_S = 1.0


def _api():
    global _declared
    lib = _lib.lib()
    if not _declared:
        with _declare_lock:
            _lib._declare(lib, _SIGNATURES)
            _declared = True
    return lib


_s = _lib.pystr


def _role(role) -> int:
    if isinstance(role, str):
        if role not in _lib.ROLES:
            raise ValueError(f"role must be one of {sorted(_lib.ROLES)}, got {role!r}")
        return _lib.ROLES[role]
    if isinstance(role, int) and not isinstance(role, bool) and role in _lib.ROLES.values():
        return role
    raise ValueError(f"role must be one of {sorted(_lib.ROLES)}, got {role!r}")


def _step(step) -> int:
    if isinstance(step, bool) or not isinstance(step, int):
        try:
            step = step.__index__()
        except AttributeError:
            raise TypeError(f"step must be an int, got {type(step).__name__}") from None
    if not 0 <= step < 2 ** 64:
        raise ValueError(f"step must be in [0, 2**64), got {step}")
    return step


def _name(name, what="tensor") -> bytes:
    b = _lib.cstr(name, what)
    if b is None or not 1 <= len(b) <= _lib.AG_NAME_MAX:
        raise ValueError(f"{what} name must be 1..{_lib.AG_NAME_MAX} bytes, got {name!r}")
    return b


def _launch_id(launch_id) -> bytes:
    if not isinstance(launch_id, str):
        raise TypeError(f"launch_id must be str, got {type(launch_id).__name__}")
    if not 1 <= len(launch_id) <= _lib.AG_LAUNCH_ID_MAX or \
            any(not " " <= ch <= "~" for ch in launch_id):
        raise ValueError(f"launch_id must be 1..{_lib.AG_LAUNCH_ID_MAX} printable ASCII "
                         f"characters, got {launch_id!r}")
    return launch_id.encode("ascii")


class Client:
    """A connection to altgradd: streams logs to its ingest socket and asks
    its query socket. Opening never waits for the daemon.

    ingest_url / query_url: nng URLs (None: $ALTGRAD_INGEST / $ALTGRAD_QUERY,
    else the daemon's defaults). run: the run name asked for (None:
    generated). The daemon files the run under that name, or under run.2,
    run.3 ... when a run of another launch has it; .run says which once the
    daemon told (start_run() waits for that). resume=True: continue the
    newest run of that name instead. launch_id: the launch this client
    belongs to; clients of one launch asking for one name share the run (None:
    $TORCHELASTIC_RUN_ID, else $ALTGRAD_LAUNCH_ID, else one of its own).
    rank, world_size: this process's place in a distributed job (None:
    $RANK / $WORLD_SIZE, which torchrun sets, else 0 and 1; give both or
    neither). Tensors that several ranks of one run log at one step are the
    shards of one tensor, summed by the daemon; log those every rank holds
    whole with replicated=True (counted once).
    metadata: a dict (sent as JSON) or a JSON object string.
    tls_cert, tls_key, tls_ca (paths of PEM files) and tls_server_name: for
    tls+tcp:// URLs, this client's certificate and key (which the daemon
    checks against its --tls-ca), the CA the daemon's certificate must chain
    to, and the name it must carry (default the URL's host). None: the
    environment ($ALTGRAD_TLS_CERT, $ALTGRAD_TLS_KEY, $ALTGRAD_TLS_CA,
    $ALTGRAD_TLS_SERVER_NAME). Read and checked at open: a missing file, one
    that is no PEM, or a key that is not the certificate's raises with the
    reason (docs/daemon.md, "Many nodes").
    policy: "drop" (default: a full send queue drops the message, counted,
    and the log call returns False) or "block" (wait for room, lossless).
    The other keywords are ag_client_opts fields (0 = the library default):
    queue_messages, queue_bytes, batch_bytes, flush_interval_ms,
    query_timeout_ms, close_timeout_ms, reconnect_ms, snapshot_every,
    sample_max, sample_seed, shm_bytes (the shared-memory segment snapshots
    go through to a daemon on this machine, docs/client.md; 0: 64 MiB,
    Client.SHM_OFF: none). Use as a context manager or call close().

    Opening prints one line to stderr when no daemon is found at the URLs
    (from the C library). A message counts as delivered once the daemon
    confirms it stored it: flush() waits for that, close() returns how many
    were never confirmed, and leaving a `with` block says so on stderr.
    """

    SHM_OFF = ctypes.c_size_t(-1).value  # shm_bytes: no shared memory (AG_SHM_OFF)

    _INT_OPTS = ("queue_messages", "queue_bytes", "batch_bytes", "flush_interval_ms",
                 "query_timeout_ms", "close_timeout_ms", "reconnect_ms", "snapshot_every",
                 "sample_max", "sample_seed", "shm_bytes")

    def __init__(self, ingest_url: str = None, query_url: str = None, run: str = None, *,
                 metadata=None, policy: str = "drop", resume: bool = False,
                 launch_id: str = None, rank: int = None, world_size: int = None,
                 tls_cert=None, tls_key=None, tls_ca=None, tls_server_name: str = None,
                 **options):
        self._c = None
        self._undelivered = 0
        # Guards _c and _inflight only; never held across a C call, so a
        # query or flush in one thread does not hold up logging in another.
        self._cv = threading.Condition(threading.Lock())
        self._inflight = 0
        self._started = False  # a logging call or start_run() started the run
        self._generation = _fork_generation
        lib = _api()
        opts = ag_client_opts()
        opts.ingest_url = _lib.cstr(ingest_url, "ingest_url")
        opts.query_url = _lib.cstr(query_url, "query_url")
        opts.run = _name(run, "run") if run is not None else None
        if metadata is not None:
            if isinstance(metadata, dict):
                metadata = json.dumps(metadata)
            opts.metadata = _lib.cstr(metadata, "metadata")
        if policy not in _POLICIES:
            raise ValueError(f"policy must be one of {sorted(_POLICIES)}, got {policy!r}")
        opts.policy = _POLICIES[policy]
        if not isinstance(resume, bool) and resume not in (0, 1):
            raise ValueError(f"resume must be a bool, got {resume!r}")
        opts.resume = int(bool(resume))
        if launch_id is not None:
            opts.launch_id = _launch_id(launch_id)
        if (rank is None) != (world_size is None):
            raise ValueError("give rank and world_size together (or neither: $RANK and "
                             "$WORLD_SIZE, else 0 and 1)")
        if world_size is not None:
            for key, value in (("rank", rank), ("world_size", world_size)):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"{key} must be an int, got {type(value).__name__}")
            if not 1 <= world_size <= _WORLD_MAX:
                raise ValueError(f"world_size must be 1..{_WORLD_MAX}, got {world_size}")
            if not 0 <= rank < world_size:
                raise ValueError(f"rank must be 0..world_size-1 ({world_size - 1}), "
                                 f"got {rank}")
            opts.rank = rank
            opts.world_size = world_size
        for key, value in (("tls_cert", tls_cert), ("tls_key", tls_key), ("tls_ca", tls_ca)):
            if value is not None:
                setattr(opts, key, _lib.cstr(os.fspath(value), key))
        opts.tls_server_name = _lib.cstr(tls_server_name, "tls_server_name")
        for key, value in options.items():
            if key not in self._INT_OPTS:
                raise TypeError(f"Client() got an unexpected keyword argument {key!r}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{key} must be an int >= 0, got {value!r}")
            setattr(opts, key, value)
        handle = _client_p()
        rc = lib.ag_client_open(ctypes.byref(handle), ctypes.byref(opts))
        if rc < 0:
            raise error_for(rc, _s(lib.ag_client_last_error(None)) or None)
        self._lib = lib
        self._c = handle
        self._run = _s(lib.ag_client_run(handle))
        self._launch = _s(lib.ag_client_launch_id(handle))
        self._rank = int(lib.ag_client_rank(handle))
        self._world_size = int(lib.ag_client_world_size(handle))
        self._query_timeout_ms = opts.query_timeout_ms or 5000  # the C default
        self._address = _s(lib.ag_client_query_url(handle))
        self._id = int(lib.ag_client_id(handle))
        self._options = dict(options)

    # -- lifetime ---------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return not self._c

    @property
    def run(self) -> str:
        """The run's name: the one the daemon filed the run under once it said
        so (the client asks in the background once the run started;
        start_run() waits for it), else the one asked for (or generated)."""
        if self._generation == _fork_generation:
            with self._cv:
                c = self._c
                if c:
                    self._inflight += 1
            if c:
                try:
                    self._run = _s(self._lib.ag_client_run(c))
                finally:
                    self._leave()
        return self._run

    @property
    def launch_id(self) -> str:
        """The launch id this client sends with its run start."""
        return self._launch

    @property
    def rank(self) -> int:
        """This client's rank (given, from $RANK, or 0)."""
        return self._rank

    @property
    def world_size(self) -> int:
        """The world size this client sends (given, from $WORLD_SIZE, or 1)."""
        return self._world_size

    def start_run(self, timeout_ms: int = 5000) -> str:
        """Start the run now (as the first logging call would) and wait at
        most timeout_ms (< 0: no limit) until the daemon says which run it
        filed it under; returns that name (also .run from then on).
        AltgradTimeoutError when no daemon answered in time: logging goes on,
        and the client keeps asking in the background."""
        self._started = True
        self._call("ag_client_start_run", int(timeout_ms))
        return self.run

    @property
    def client_id(self) -> int:
        return self._id

    def _enter(self):
        if self._generation != _fork_generation:
            raise AltgradError(_lib.AG_ECLOSED, "this Client was opened by the parent "
                               "process (fork); open a new one in the child")
        with self._cv:
            if not self._c:
                raise AltgradError(_lib.AG_ECLOSED)
            self._inflight += 1
            return self._c

    def _leave(self):
        with self._cv:
            self._inflight -= 1
            if not self._inflight:
                self._cv.notify_all()

    def _call(self, name, *args, allow_again=False, query=False, explain=False):
        fn = _lib.func(name)
        c = self._enter()
        try:
            rc = fn(c, *args)
            if name.startswith("ag_client_log_") and (rc >= 0 or rc == _lib.AG_EAGAIN):
                self._started = True  # a logging call that got past its checks starts it
            if rc < 0:
                if allow_again and rc == _lib.AG_EAGAIN:
                    return rc
                # the daemon's text is kept per thread for the last failed
                # query: only a query's failure may quote it
                detail = _s(self._lib.ag_client_last_error(c)) or None if query or explain \
                    else None
                raise error_for(rc, detail)
        finally:
            self._leave()
        return rc

    def flush(self, timeout_ms: int = 5000) -> None:
        """Wait (at most timeout_ms; < 0: no limit) until the daemon confirms
        it stored everything queued so far. TransportError at once when there
        is no daemon (its text says where it looked); AltgradTimeoutError when
        a daemon did not confirm in time; LostError at once when it stored a
        later message but not all earlier ones; stats()["undelivered"] then
        says how many are unconfirmed."""
        self._call("ag_client_flush", int(timeout_ms), query=True)

    def end_run(self) -> None:
        """Queue run_end (with the highest step logged); later logging calls
        raise. close() does it when you did not."""
        self._call("ag_client_end_run")

    def stats(self) -> dict:
        """This client's counters (ag_client_stats): queued, sent, dropped,
        records, records_dropped, snapshots, skipped, bytes_sent, delivered
        (confirmed by the daemon as of the last flush) and undelivered (queued
        and not confirmed: in the queue, in transit, or lost)."""
        st = ag_client_stats()
        self._call("ag_client_get_stats", ctypes.byref(st))
        return {f: int(getattr(st, f)) for f, _ in ag_client_stats._fields_}

    def close(self) -> int:
        """End the run, flush with a bounded wait (close_timeout_ms, the
        daemon's confirmation included) and free the client. Returns how many
        messages were never confirmed delivered (ag_client_close): queued and
        dropped at close, or sent and not confirmed; 0 when all arrived or
        nothing was logged. Idempotent: later calls return the same number.
        .run keeps the last name known."""
        if self._generation != _fork_generation:
            self._c = None  # the parent's handle: nothing here to stop or free
            return 0
        with self._cv:
            c, self._c = self._c, None
            if not c:
                return self._undelivered
            # calls already past _enter finish (or block inside C, where the
            # C close wakes them) before the handle is freed
            self._cv.wait_for(lambda: not self._inflight, timeout=_CLOSE_GRACE_S)
        self._run = _s(self._lib.ag_client_run(c))
        self._undelivered = int(self._lib.ag_client_close(c))
        return self._undelivered

    def _close_and_tell(self):
        """close() for callers that cannot take its answer (a `with` block,
        garbage collection): an undelivered count goes to stderr instead."""
        was_open = bool(self._c)
        n = self.close()
        if was_open and n > 0:
            print(f"altgrad: {n} messages of run {self._run} were never confirmed by the "
                  "daemon", file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._close_and_tell()
        return False

    def __del__(self):
        try:
            self._close_and_tell()
        except Exception:
            pass

    # -- logging: each returns True when queued, False when the send queue was
    # full and the message was dropped (counted; only under policy "drop") ------
    def log_sgd(self, step: int, tensor: str, w, g, lr: float, *, scale: float = None,
                formats=None, numel: int = None, replicated: bool = False) -> bool:
        """Snapshot in SGD form: weights w, gradients g, learning rate lr.
        With world_size > 1, w and g are this rank's shard of the tensor;
        replicated=True: every rank holds the whole tensor (counted once)."""
        return self._snapshot(step, tensor, w, g, float(lr), scale, formats, numel, replicated)

    def log_update(self, step: int, tensor: str, w, u, *, scale: float = None,
                   formats=None, numel: int = None, replicated: bool = False) -> bool:
        """Snapshot in update form: weights w before the step and the update
        u = w_after - w from any optimizer."""
        return self._snapshot(step, tensor, w, u, None, scale, formats, numel, replicated)

    def log_snapshot(self, step: int, tensor: str, w, second, *, lr: float = None,
                     scale: float = None, formats=None, numel: int = None,
                     replicated: bool = False) -> bool:
        """The general snapshot: SGD form when lr is given (second = g), update
        form otherwise (second = u); an explicit scale for every format and/or
        a list of format names. numel: the whole tensor's element count when
        w and second hold only a subset of it (sampled by the caller).
        replicated: as log_sgd's."""
        return self._snapshot(step, tensor, w, second, lr, scale, formats, numel, replicated)

    @property
    def sample_max(self) -> int:
        """The client option sample_max (0: whole tensors)."""
        return self._options.get("sample_max", 0)

    @property
    def sample_seed(self) -> int:
        """The client option sample_seed (0: the library's default seed)."""
        return self._options.get("sample_seed", 0)

    def _snapshot(self, step, tensor, w, second, lr, scale, formats, numel=None,
                  replicated=False) -> bool:
        step = _step(step)
        if not isinstance(replicated, bool) and replicated not in (0, 1):
            raise ValueError(f"replicated must be a bool, got {replicated!r}")
        name = _name(tensor)
        wb, sb = typed(w, "w"), typed(second, "g" if lr is not None else "u")
        if wb.dtype != sb.dtype:  # mixed precisions: meet in float32
            wb, sb = f32(w, "w"), f32(second, "g" if lr is not None else "u")
        if wb.n != sb.n:
            raise ValueError(f"w and {'g' if lr is not None else 'u'} differ in size: "
                             f"{wb.n} vs {sb.n}")
        if wb.n == 0:
            raise ValueError("w is empty")
        if numel is not None:
            if isinstance(numel, bool) or not isinstance(numel, int) or numel < wb.n:
                raise ValueError(f"numel must be an int >= the {wb.n} elements given, "
                                 f"got {numel!r}")
            if numel == wb.n:
                numel = None
        if (scale is None and formats is None and numel is None and not replicated
                and wb.dtype == _lib.AG_DTYPE_F32):
            if lr is not None:
                rc = self._call("ag_client_log_sgd", step, name, wb.ptr, sb.ptr, wb.n, lr,
                                allow_again=True)
            else:
                rc = self._call("ag_client_log_update", step, name, wb.ptr, sb.ptr, wb.n,
                                allow_again=True)
            return rc != _lib.AG_EAGAIN
        snap = ag_snapshot(step=step, tensor=name, dtype=wb.dtype, w=wb.ptr, n=wb.n,
                           numel=numel or 0, replicated=int(bool(replicated)))
        if lr is not None:
            snap.g = sb.ptr
            snap.lr = lr
        else:
            snap.u = sb.ptr
        if scale is not None:
            scale = float(scale)
            if not (scale > 0 and scale != float("inf")):
                raise ValueError(f"scale must be finite and > 0, got {scale}")
            snap.scale = scale
        keep = None
        if formats is not None:
            names = [f if isinstance(f, str) else getattr(f, "name", f) for f in formats]
            if len(names) > _lib.AG_FORMATS_MAX:
                raise ValueError(f"at most {_lib.AG_FORMATS_MAX} formats")
            keep = (c_char_p * max(len(names), 1))(*[_lib.cstr(n, "format") for n in names])
            snap.formats = keep
            snap.nformats = len(names)
        rc = self._call("ag_client_log_snapshot", ctypes.byref(snap), allow_again=True)
        del keep
        return rc != _lib.AG_EAGAIN

    def log_stats(self, step: int, tensor: str, x, role="activation") -> bool:
        """Per-step statistics of x (amax over finite elements, non-finite
        count), computed in C from x's memory (float32, bfloat16 or float16
        as they are; other dtypes converted to float32)."""
        step = _step(step)
        name = _name(tensor)
        xb = typed(x, "x")
        if xb.n == 0:
            raise ValueError("x is empty")
        if xb.dtype == _lib.AG_DTYPE_F32:
            rc = self._call("ag_client_log_stats", step, name, _role(role), xb.ptr, xb.n,
                            allow_again=True)
        else:
            rc = self._call("ag_client_log_stats_typed", step, name, _role(role), xb.dtype,
                            xb.ptr, xb.n, allow_again=True)
        return rc != _lib.AG_EAGAIN

    def log_amax(self, step: int, tensor: str, role, amax: float, numel: int,
                 nonfinite: int = 0) -> bool:
        """Statistics computed elsewhere (e.g. reduced on a GPU)."""
        rc = self._call("ag_client_log_amax", _step(step), _name(tensor), _role(role),
                        float(amax), _step(numel), _step(nonfinite), allow_again=True)
        return rc != _lib.AG_EAGAIN

    def log_counts(self, step: int, tensors, formats, counts, scales, amax, numel, nonfinite,
                   flips=None, form="update", replicated=False, mse=None,
                   sqnr_db=None) -> bool:
        """Stall counts computed by the caller (e.g. on the GPU, with
        altgrad.torch.stall_counts and the daemon's scale rule from
        status()) for T tensors at one step in F formats; the daemon stores
        them like its own results (history's "computed" is "device").

        tensors, formats: lists of str. counts: T*F*5 integers, tensor-major,
        each (stalled, total, overflow, underflow, nonfinite), flat or nested
        [T][F][5]; scales: T*F floats; amax, numel, nonfinite: T values each;
        flips: None (not counted) or T*F integers, -1 where unknown. Numbers
        may be sequences or buffers (array.array, memoryview, numpy arrays, a
        CPU torch tensor or its .numpy()): a buffer already holding the C type
        (uint64 / int64, float64 for amax, float32 for scales) is passed
        without a copy, another is converted in C. form: "update" or "sgd".
        replicated: a bool for every tensor, or a sequence of T bools: tensors
        every rank holds whole (counted once); the others are this rank's
        shards when world_size > 1 (the daemon sums them; send them with the
        whole tensor's scale).
        mse, sqnr_db: None (unknown) or T*F floats each, the quantization
        error of each tensor's weights in each format at the scale sent
        (docs/numerics.md), NaN or None where unknown: mse finite >= 0,
        sqnr_db finite and only beside an mse > 0, neither for a tensor with
        no finite element (ValueError otherwise, nothing sent). The daemon
        stores them as history's mse and sqnr_db.
        Returns True when queued, False when (some of) it was dropped on a
        full queue (policy "drop")."""
        step = _step(step)
        names = [_name(t) for t in tensors]
        fmts = [_lib.cstr(f if isinstance(f, str) else getattr(f, "name", f), "format")
                for f in formats]
        t, f = len(names), len(fmts)
        if t == 0 or f == 0:
            raise ValueError("log_counts needs at least one tensor and one format")
        if f > _lib.AG_FORMATS_MAX:
            raise ValueError(f"at most {_lib.AG_FORMATS_MAX} formats")
        forms = {"sgd": 0, "update": 1, 0: 0, 1: 1}
        if form not in forms:
            raise ValueError(f"form must be 'update' or 'sgd', got {form!r}")
        arrays = {"counts": (counts, "u64", t * f * 5), "scales": (scales, "f32", t * f),
                  "amax": (amax, "f64", t), "numel": (numel, "u64", t),
                  "nonfinite": (nonfinite, "u64", t)}
        if flips is not None:
            arrays["flips"] = (flips, "i64", t * f)
        for key, x in (("mse", mse), ("sqnr_db", sqnr_db)):
            if x is not None:
                arrays[key] = (_none_as_nan(x), "f64", t * f)
        held = {}
        for key, (x, kind, want) in arrays.items():
            a = c_array(x, kind, key)
            if a.n != want:
                raise ValueError(f"{key}: {want} values expected ({t} tensors, {f} formats), "
                                 f"got {a.n}")
            held[key] = a
        repl = None
        if isinstance(replicated, (bool, int)) and not hasattr(replicated, "__len__"):
            if replicated not in (0, 1):
                raise ValueError(f"replicated must be a bool or {t} bools, got {replicated!r}")
            if replicated:
                repl = (ctypes.c_uint8 * t)(*([1] * t))
        else:
            flags = [bool(x) for x in replicated]
            if len(flags) != t:
                raise ValueError(f"replicated: {t} values expected (one per tensor), "
                                 f"got {len(flags)}")
            if any(flags):
                repl = (ctypes.c_uint8 * t)(*flags)
        tensor_p = (c_char_p * t)(*names)
        format_p = (c_char_p * f)(*fmts)
        b = ag_counts_batch(step=step, form=forms[form], ntensors=t, nformats=f,
                            tensors=tensor_p, formats=format_p)
        for key, a in held.items():
            setattr(b, key, a.ptr)
        if repl is not None:
            b.replicated = ctypes.cast(repl, c_void_p)
        rc = self._call("ag_client_log_counts", ctypes.byref(b), allow_again=True, explain=True)
        del held, tensor_p, format_p, repl
        return rc != _lib.AG_EAGAIN

    # -- queries ----------------------------------------------------------------
    def _query(self, name, restype, *args):
        out = POINTER(restype)()
        self._call(name, *args, ctypes.byref(out), query=True)
        if not out:
            raise AltgradError(_lib.AG_EPROTO, f"{name} succeeded without a result")
        return out

    def _free(self, res):
        self._lib.ag_free(ctypes.cast(res, c_void_p))

    def _run_arg(self, run) -> str:
        """The run a query is about: the one given, else this client's run.
        Once this client's run started, its name is the daemon's: wait (at most
        the query timeout) for the daemon to say it, as the query would."""
        if run is not None:
            _name(run, "run")
            return run
        if self._started:
            try:
                self._call("ag_client_start_run", self._query_timeout_ms)
            except AltgradError:
                pass  # no answer: ask under the name known so far; the query says why
        return self.run

    # Every query returns the document the CLI prints with --json (present/
    # json_layout.c; docs/cli.md lists them): the same keys and nesting, reals
    # that are NaN or infinite as None, roles as their names, times in Unix ms.
    # The keys of rows and of status come from the library (_cols).
    def runs(self) -> dict:
        """Every run the daemon knows: {"runs": [{"name", "host", "pid",
        "client_id", "started_ms", "ended_ms", "last_step", "messages",
        "dropped", "metadata", "world_size", "ranks_seen", "rank_drops",
        "incomplete"}, ...]}: rank_drops is JSON text {"rank": dropped} of
        the ranks with drops, incomplete the (tensor, step)s stored without
        every rank's shard."""
        res = self._query("ag_client_runs", _lib.ag_run_list)
        try:
            r = res.contents
            cols = _cols(_lib.AG_RESULT_RUNS)
            return {"runs": [_row(r.items[i], cols) for i in range(r.n)]}
        finally:
            self._free(res)

    def tensors(self, run: str = None) -> dict:
        """The tensors of a run (default: this client's): {"run", "tensors":
        [{"name", "role", "numel", "first_step", "last_step", "snapshots",
        "last_amax"}, ...]}, role as its name ("weight", "activation", ...)."""
        run = self._run_arg(run)
        res = self._query("ag_client_tensors", _lib.ag_tensor_list, _name(run, "run"))
        try:
            r = res.contents
            rows = [_row(r.items[i], _cols(_lib.AG_RESULT_TENSORS)) for i in range(r.n)]
            for t in rows:
                t["role"] = _role_name(t["role"])
            return {"run": run, "tensors": rows}
        finally:
            self._free(res)

    def history(self, tensor: str, run: str = None, format: str = "E5M2", from_step: int = 0,
                to_step: int = 0, every: int = 0) -> dict:
        """Per-step stall history of one tensor in one format: {"run",
        "tensor", "format", "points": [{"step", "stalled", "total",
        "stall_rate", "flips", "overflow", "underflow", "nonfinite", "amax",
        "scale", "computed", "ranks", "complete", "mse", "sqnr_db"}, ...]},
        ascending step; ranks: how many ranks reported the step (a sharded
        tensor's shards), complete: 1, or 0 for a step some rank never sent;
        mse, sqnr_db: the quantization error of the snapshot's weights (None
        when unknown: counts from a trainer, downsampled points)."""
        run = self._run_arg(run)
        q = _lib.ag_history_query(run=_name(run, "run"), tensor=_name(tensor),
                                  format=_lib.cstr(format, "format"),
                                  from_step=_step(from_step), to_step=_step(to_step),
                                  every=_step(every))
        res = self._query("ag_client_history", _lib.ag_history, ctypes.byref(q))
        try:
            r = res.contents
            cols = _cols(_lib.AG_RESULT_HISTORY)
            return {"run": _s(r.run) if r.run is not None else run,
                    "tensor": _s(r.tensor) if r.tensor is not None else tensor,
                    "format": _s(r.format) if r.format is not None else format,
                    "points": [_row(r.points[i], cols) for i in range(r.n)]}
        finally:
            self._free(res)

    def scales(self, run: str = None, format: str = "E5M2") -> dict:
        """Latest scale per tensor: {"run", "format", "scales": [{"tensor",
        "step", "amax", "scale"}, ...]}."""
        run = self._run_arg(run)
        res = self._query("ag_client_scales", _lib.ag_scale_list, _name(run, "run"),
                          _lib.cstr(format, "format"))
        try:
            r = res.contents
            cols = _cols(_lib.AG_RESULT_SCALES)
            return {"run": run, "format": _s(r.format) if r.format is not None else format,
                    "scales": [_row(r.items[i], cols) for i in range(r.n)]}
        finally:
            self._free(res)

    def top(self, run: str = None, format: str = "E5M2", window: int = 0,
            limit: int = 10) -> dict:
        """Tensors by stall rate over the run's last `window` steps (0 = all):
        {"run", "format", "from_step", "to_step", "tensors": [{"tensor",
        "stall_rate", "stalled", "total", "steps"}, ...]}, worst first."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be an int >= 0, got {limit!r}")
        run = self._run_arg(run)
        res = self._query("ag_client_top", _lib.ag_top_list, _name(run, "run"),
                          _lib.cstr(format, "format"), _step(window), limit)
        try:
            r = res.contents
            top = _cols(_lib.AG_RESULT_TOP)
            return {"run": run, "format": _s(r.format) if r.format is not None else format,
                    "from_step": int(r.from_step), "to_step": int(r.to_step),
                    "tensors": [_row(r.items[i], top) for i in range(r.n)]}
        finally:
            self._free(res)

    def report(self, run: str = None, formats: str = None, width: int = 0) -> dict:
        """What `altgrad report` prints, in one query: {"run", "rows":
        [{"tensor", "format", "steps", "last_rate", "mean_rate", "max_rate",
        "last_sqnr_db", "sparkline"}, ...]}, every weight tensor by name in each of formats
        (comma-separated; None: those the daemon evaluates), the sparkline
        at most `width` columns (0: 40, at most 1000)."""
        if isinstance(width, bool) or not isinstance(width, int) or width < 0:
            raise ValueError(f"width must be an int >= 0, got {width!r}")
        run = self._run_arg(run)
        fmts = None if formats is None else formats.encode()
        res = self._query("ag_client_report", _lib.ag_report, _name(run, "run"), fmts, width)
        try:
            r = res.contents
            cols = _cols(_lib.AG_RESULT_REPORT)
            return {"run": run, "rows": [_row(r.items[i], cols) for i in range(r.n)]}
        finally:
            self._free(res)

    def status(self) -> dict:
        """The daemon's counters: {"source": "daemon", "address": the query
        URL, "version", "uptime_s", "messages", "bytes", "rejected",
        "dropped", "queue_depth", "rows_written", "runs", "tensors",
        "db_path", "formats", "store", "discarded", and the daemon's scale
        rule: "history_len", "amax_mode" ("max" | "most_recent"),
        "scale_mode" ("current" | "delayed"), "margin", "scale_min", what it
        takes ("caps"), and its clients' shared memory: "shm_segments" mapped
        now, "shm_passed" of them passed over its descriptor socket,
        "shm_snapshots" read from segments and "shm_refused" segments since
        it started}; store is "ok" or "degraded: <why>" while the disk
        refuses writes; keys a daemon predates are 0 / None."""
        res = self._query("ag_client_status", _lib.ag_status)
        try:
            out = {"source": "daemon", "address": self._address}
            out.update(_row(res.contents, _cols(_lib.AG_RESULT_STATUS)))
            return out
        finally:
            self._free(res)


# The columns of each document (a row of a list, status's record): the
# library's own keys (ag_result_key, from the reply tables of proto/spec.c
# that present/json_layout.c walks too), read once at first use.
_cols_cache = {}


def _cols(result: int) -> tuple:
    cols = _cols_cache.get(result)
    if cols is None:
        cols = _cols_cache[result] = _lib.result_keys(result)
    return cols


# Counts that may be unknown: their C value is then AG_FLIPS_UNKNOWN (2^64 - 1).
_MAYBE_UNKNOWN = frozenset({"flips"})
_FLIPS_UNKNOWN = (1 << 64) - 1


def _value(v, key=None):
    """A C field as the JSON documents show it: text as str, a NaN or
    infinite real as None (JSON null), integers as int, an unknown count
    (flips) as None."""
    if isinstance(v, bytes):
        return _s(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if key in _MAYBE_UNKNOWN and v == _FLIPS_UNKNOWN:
        return None
    return v


def _row(struct, cols) -> dict:
    return {f: _value(getattr(struct, f), f) for f in cols}


def _role_name(role: int):
    for k, v in _lib.ROLES.items():
        if v == role:
            return k
    return None  # as ag_role_name: out of range


__all__ = ["Client"]
