"""altgrad.torch.Monitor: stream a PyTorch model's snapshots to altgradd.

Attach it to a model and its optimizer. Every `every` optimizer steps it sends,
per parameter, the weights with either the gradient and learning rate (SGD
form) or the update the optimizer really applied, u = w_after - w_before
(update form, right for Adam and anything else); and the amax of every leaf
module's output through forward hooks. Its own cost is timed and reported.
"""

from __future__ import annotations

import fnmatch
import math
import queue
import threading
import time
import warnings
from typing import Dict, Iterable, List, Optional

import torch

from . import _device, _lib
from .errors import AltgradError

_FORMS = ("update", "sgd")


def stall_counts(w: torch.Tensor, x: torch.Tensor, formats, scales, form: str = "update",
                 lr=None, quant_error: bool = False) -> Dict[str, Dict[str, int]]:
    """Counts of one snapshot, computed where w lives, bit for bit as the C
    core (and so the daemon) computes them: {format: {"stalled", "total",
    "overflow", "underflow", "nonfinite"}} (ints).

    w: the weights; x: the update u = w_new - w (form="update", any
    optimizer) or the gradient g (form="sgd", with the learning rate `lr`:
    u = -lr * g). float32, bfloat16 or float16 (widened exactly), same shape,
    same device (CPU or CUDA). formats: a name or a list of names; scales: one
    number for all, a list (one per format) or a dict {format: scale}; each
    positive and finite in float32. On CUDA one fused kernel counts every
    format in one pass (Triton; eager torch where Triton is missing).
    Block-scaled formats (MXFP4, NVFP4, ...) take the FP32 tensor scale (1
    for MX). quant_error=True adds "mse" and "sqnr_db" (floats, NaN when
    unknown) to each format's dict: the quantization error of w at the
    scale, as docs/numerics.md defines it (float64 sums, equal to the C
    core's up to their order)."""
    return _device.stall_counts(w, x, formats, scales, form=form, lr=lr,
                                quant_error=quant_error)


def _finite_stats(t: torch.Tensor) -> torch.Tensor:
    """[max |x| over finite elements (0 if none), count of NaN/inf] on t's
    device, float64, without a host sync."""
    x = t.detach()
    finite = torch.isfinite(x)
    mag = torch.where(finite, x.abs(), torch.zeros((), dtype=x.dtype, device=x.device))
    amax = mag.amax() if x.numel() else torch.zeros((), device=x.device)
    return torch.stack([amax.to(torch.float64), (~finite).sum().to(torch.float64)])


def _norm_list(tensors: List[torch.Tensor]) -> List[torch.Tensor]:
    """max |x| of each tensor (NaN/inf when it holds any), with a fused
    multi-tensor kernel where PyTorch has one."""
    try:
        return list(torch._foreach_norm(tensors, math.inf))
    except (RuntimeError, AttributeError, TypeError):
        return [torch.linalg.vector_norm(t, math.inf) for t in tensors]


def _stacked(norms: List[torch.Tensor]) -> torch.Tensor:
    """Norms of one device as one float64 tensor (one conversion when they
    share a dtype: few launches)."""
    if len({n.dtype for n in norms}) == 1:
        return torch.stack(norms).to(torch.float64)
    return torch.stack([n.to(torch.float64) for n in norms])


def _norms(tensors: List[torch.Tensor]) -> torch.Tensor:
    """_norm_list of tensors on one device, as one float64 tensor there."""
    return _stacked(_norm_list(tensors))


def _max_abs(tensors: List[torch.Tensor]) -> List[float]:
    """_norm_list as floats, fetched in one copy when they share a device."""
    norms = _norm_list(tensors)
    if len({n.device for n in norms}) == 1:
        return _stacked(norms).cpu().tolist()
    return [float(n) for n in norms]


def _device_events(devices) -> list:
    """One event per CUDA device, recorded on its current stream (where the
    work queued for its tensors runs): the sender waits for them all."""
    events = []
    for d in {torch.device(d) for d in devices if torch.device(d).type == "cuda"}:
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(d))
        events.append(ev)
    return events


def _wait(events) -> None:
    for ev in events:
        ev.synchronize()


def _is_dtensor(t) -> bool:
    """A torch.distributed DTensor (FSDP2 and tensor-parallel parameters),
    found by its interface: no import of a module old torch lacks."""
    return (isinstance(t, torch.Tensor) and hasattr(t, "to_local")
            and hasattr(t, "placements") and hasattr(t, "device_mesh"))


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of t: a DTensor's local shard, any other tensor itself."""
    if not _is_dtensor(t):
        return t
    x = t.to_local()
    # an AsyncCollectiveTensor (a redistributed DTensor): its collective may still run
    wait = getattr(x, "wait", None)
    return wait() if callable(wait) else x


def _placement(pl) -> str:
    """'replicate', 'shard' or 'partial' for a DTensor placement."""
    for kind in ("replicate", "shard", "partial"):
        probe = getattr(pl, f"is_{kind}", None)
        if probe is not None and probe():
            return kind
    return type(pl).__name__.lower()


def _dtensor_layout(name: str, p, world_size: int) -> str:
    """'replicated' or 'sharded' for a DTensor parameter; ValueError for the
    layouts the daemon cannot combine (a shard replicated over part of the
    ranks, e.g. HSDP or 2-D parallelism, or a mesh that is not the Monitor's
    process group)."""
    kinds = {_placement(pl) for pl in p.placements}
    if kinds == {"replicate"}:
        return "replicated"
    mesh_size = p.device_mesh.size()
    if kinds != {"shard"} or mesh_size != world_size:
        raise ValueError(
            f"parameter {name} is a DTensor with placements {tuple(p.placements)} over "
            f"{mesh_size} of the Monitor's {world_size} ranks: only tensors sharded over "
            "every rank of the process group, or replicated on all of them, can be "
            "combined; watch one replica (a Monitor on its ranks, process_group= its "
            "group, Clients with rank= and world_size= in it) or exclude= the tensor")
    return "sharded"


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    return None


_COMPUTES = ("device", "daemon")
# compute="daemon" from CUDA: the sender thread fetches a sampled step's
# snapshots through two reusable host buffers of this many float32 each
# (pinned; grown to hold the largest tensor's w and u), one group of tensors
# copying from the device while the client reads the other; and at most this
# many sampled steps' device copies wait for it (the training thread waits
# for the oldest beyond that): device and pinned memory stay bounded, and
# nothing is pinned on the training thread.
_STAGE_ELEMS = 16 << 20
_FETCHES_MAX = 2
_MIX_GOLDEN = 0x9E3779B97F4A7C15
_SAMPLE_STRIDE = 0xD1B54A32D192ED03
_M64 = (1 << 64) - 1


def _mix64(z: int) -> int:
    """client/log.c mix64 (splitmix64's finalizer)."""
    z = (z + _MIX_GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def sample_indices(n: int, m: int, seed: int = 0) -> List[int]:
    """The m of n element indices the client's sample_max keeps (client/log.c
    gather_sample): one from each of m strata, its offset drawn from (seed,
    stratum); seed 0 is the client's default seed."""
    seed = seed or _MIX_GOLDEN
    q, r = divmod(n, m)
    out = []
    for k in range(m):
        ln = q + (k < r)
        start = k * q + (k if k < r else r)
        out.append(start + _mix64(seed ^ ((k * _SAMPLE_STRIDE) & _M64)) % ln)
    return out


def _as_buffer(t: torch.Tensor):
    """A CPU tensor as something Client.log_counts reads without a Python
    loop (a NumPy view where NumPy is there)."""
    try:
        return t.numpy()
    except (RuntimeError, TypeError, ImportError):
        return t.tolist()


def _qerr_values(q: torch.Tensor, nfin: torch.Tensor):
    """mse and sqnr_db (float64 buffers, T*F, NaN unknown) from the sums
    q [T, F, 2] (squared error, squared w) and the finite elements [T]:
    mse = error / n, sqnr_db = 10 log10(w^2 / error), as ag_quant_mse and
    ag_quant_sqnr_db (NaN when n, the error or the signal is 0)."""
    err, sig = q[:, :, 0], q[:, :, 1]
    n = nfin[:, None].expand_as(err)
    nan = torch.full_like(err, math.nan)
    mse = torch.where(n > 0, err / n.clamp(min=1), nan)
    ok = (n > 0) & (err > 0) & (sig > 0)
    sqnr = torch.where(ok, 10.0 * torch.log10(torch.where(ok, sig / err, torch.ones_like(err))),
                       nan)
    # an error past float64 (weights far past the format at a tiny explicit
    # scale) has no finite mse to send: unknown, as the protocol wants
    fin = torch.isfinite(mse)
    mse = torch.where(fin, mse, nan)
    sqnr = torch.where(fin & torch.isfinite(sqnr), sqnr, nan)
    return (_as_buffer(mse.contiguous().view(-1)), _as_buffer(sqnr.contiguous().view(-1)))


class _Sender:
    """A background thread that waits for the device's results (an event) and
    hands them to the client, so the training step never waits for a copy.
    Jobs run in order; close() waits for them all."""

    def __init__(self):
        self._q: "queue.Queue" = queue.Queue()
        self._errors: List[BaseException] = []
        self._t = threading.Thread(target=self._run, name="altgrad-monitor-send", daemon=True)
        self._t.start()

    def _run(self):
        while True:
            job = self._q.get()
            if job is None:
                return
            try:
                job()
            except BaseException as e:  # kept for close(): the trainer goes on
                if len(self._errors) < 8:
                    self._errors.append(e)

    def submit(self, job) -> None:
        self._q.put(job)

    def pending(self) -> int:
        return self._q.qsize()

    def close(self) -> List[BaseException]:
        self._q.put(None)
        self._t.join()
        return self._errors


class Monitor:
    """Watches the parameters of `model` while `optimizer` trains it: every
    `every` optimizer steps, how many updates each 8-bit format would lose
    (bit stalls), overflow, underflow and (optionally) pattern flips, plus the
    amax of every leaf module's output and of each gradient, through `client`
    (an altgrad.Client) to altgradd.

    compute: "device" (default) counts on each parameter's own device, in one
          fused pass per device and dtype for all formats (altgrad.torch.
          stall_counts, bit for bit the daemon's result), and sends only the
          counts, the amax and the scales used; the scales follow the daemon's
          rule (history length, amax mode, scale mode, margin), learned from
          its status at start (or `rule`, or the defaults with no daemon).
          "daemon" sends each tensor (w and u, or w and g) as a snapshot for
          the daemon to evaluate; with `sample_max` (default: the client's
          option) only that many elements of each tensor, the same subset the
          client would keep, chosen on the device before anything is copied
          (sample_max=0: whole tensors, the client samples); from CUDA the copy
          is asynchronous and a background thread hands it to the client.
    form: "update" (default; w before the step and u = w_after - w_before, any
          optimizer) or "sgd" (w and the gradient with the param group's lr, or
          `lr` if given; the update is -lr * g).
    flips: compute="device" only: also count pattern flips against the previous
          sampled step. Costs one byte per element per format on the device
          (5 formats: 5 bytes per parameter); without it flips are unknown.
          Block-scaled formats (MXFP4, NVFP4, ...): flips at the previous
          step's block scales, as the daemon counts them (eager torch on the
          device, also on CUDA; their patterns cost the same byte an element).
    quant_error: compute="device" only (default True): also compute each
          tensor's quantization error in each format (mse and SQNR in dB, as
          the daemon's own pass, docs/numerics.md) in the same pass and send
          it, when the daemon says it reads it (status "caps" has
          AG_CAP_QERR); unknown for block-scaled formats.
    include / exclude: fnmatch patterns on parameter names (with `prefix`);
          a parameter is watched when it matches an include pattern (or none
          is given) and no exclude pattern. Its ".grad" statistics follow it.
    start / stop: sample only steps start <= step < stop (stop None: no end).
    activations: hook every leaf module's forward and log its output's amax
          (role activation) on sampled steps; or an iterable of module names.
    gradients: also log each gradient's amax (role gradient) on sampled steps.
    step: the step number of the first training step (default 0); it grows
          by one at every optimizer.step().
    scale / formats: an explicit scale for every format, and the formats (None:
          the daemon's scales from its amax history, and its default formats).
    process_group: under torch.distributed, the group whose ranks are the
          run's (default: the world); the client's rank and world_size must be
          this process's in it. Each rank runs its own Monitor.
    replicated: tensors every rank holds whole, logged by rank 0 alone and
          marked so (counted once): True (all), fnmatch patterns on names or a
          function (name, parameter) -> bool, on top of what is detected (a
          DistributedDataParallel model, DTensors replicated on every rank).
          Every other parameter of a run with several ranks is this rank's
          shard (a DTensor's local shard): counted there, with compute="device"
          at the whole tensor's scale (its amax all-reduced, MAX, once per
          sampled step for all of them). docs/python.md, "Many ranks".

    Without an optimizer, call before_step() and after_step() around your own
    update. close() (or leaving a `with` block) detaches, sends what is
    pending, flushes and returns report(), the cost summary, with how many of
    the client's messages the daemon confirmed ("delivered") and not
    ("undelivered").
    """

    def __init__(self, client, model: torch.nn.Module, optimizer=None, *, every: int = 10,
                 form: str = "update", lr: Optional[float] = None, activations=True,
                 gradients: bool = True, step: int = 0, prefix: str = "",
                 scale: Optional[float] = None, formats: Optional[Iterable[str]] = None,
                 verbose: bool = False, compute: str = "device", flips: bool = False,
                 include: Optional[Iterable[str]] = None,
                 exclude: Optional[Iterable[str]] = None, start: int = 0,
                 stop: Optional[int] = None, sample_max: Optional[int] = None,
                 rule: Optional[_device.ScaleRule] = None, process_group=None,
                 replicated=None, quant_error: bool = True):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if form not in _FORMS:
            raise ValueError(f"form must be one of {_FORMS}, got {form!r}")
        if compute not in _COMPUTES:
            raise ValueError(f"compute must be one of {_COMPUTES}, got {compute!r}")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if form == "sgd" and optimizer is None and lr is None:
            raise ValueError("form='sgd' needs an optimizer or an explicit lr")
        for what, v in (("step", step), ("start", start)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{what} must be an int >= 0, got {v!r}")
        if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int)
                                 or stop < start):
            raise ValueError(f"stop must be None or an int >= start, got {stop!r}")
        if sample_max is None and compute == "daemon":
            # the client's own sample_max: taken on the device, so the copy is cut too
            sample_max = getattr(client, "sample_max", 0) or None
        if sample_max == 0:
            sample_max = None  # whole tensors from here (the client may still sample)
        if sample_max is not None:
            if compute != "daemon":
                raise ValueError("sample_max is for compute='daemon' (the device counts whole "
                                 "tensors)")
            if isinstance(sample_max, bool) or not isinstance(sample_max, int) or sample_max < 1:
                raise ValueError(f"sample_max must be an int >= 1, got {sample_max!r}")
        if flips and compute != "device":
            raise ValueError("flips= is for compute='device' (the daemon counts flips itself)")
        if rule is not None and not isinstance(rule, _device.ScaleRule):
            raise TypeError("rule must be an altgrad.torch.ScaleRule")
        if scale is not None:
            scale = _device.check_scale(scale)
        self.client = client
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.form = form
        self.lr = lr
        self.gradients = gradients
        self.step = step
        self.start = start
        self.stop = stop
        self.prefix = prefix
        self.scale = scale
        self.formats = list(formats) if formats is not None else None
        self.verbose = verbose
        self.compute = compute
        self.flips = bool(flips)
        self.quant_error = bool(quant_error) and compute == "device"
        self._daemon_caps = 0
        self.sample_max = sample_max
        self.include = list(include) if include is not None else None
        self.exclude = list(exclude) if exclude is not None else []
        self._params = [(prefix + n, p) for n, p in model.named_parameters()
                        if p.requires_grad and self._wanted(prefix + n)]
        self._pg = process_group
        self.rank, self.world_size, self._dist = self._ranks(client, process_group)
        self._replicated, self._sharded = self._layouts(model, replicated)
        self._shard_set = set(self._sharded)
        if self.rank != 0:  # a replicated tensor is logged once, by rank 0
            self._params = [(n, p) for n, p in self._params if n not in self._replicated]
        empty = [n for n, p in self._params if n in self._shard_set and _local(p).numel() == 0]
        if empty:
            warnings.warn(f"rank {self.rank} holds no element of {', '.join(empty[:5])}"
                          f"{' ...' if len(empty) > 5 else ''}: nothing to send for them, so "
                          "the daemon stores their steps incomplete", RuntimeWarning,
                          stacklevel=2)
        if compute == "device" and self._sharded and not self._dist:
            raise ValueError(
                f"rank {self.rank} of {self.world_size} with sharded tensors needs "
                "torch.distributed initialized (compute='device' all-reduces their amax); "
                "or use compute='daemon', or mark the tensors replicated=")
        self._lr_of = self._param_lrs()
        self._before: Dict[str, torch.Tensor] = {}
        self._pending: List[tuple] = []      # (name, role, tensor) reduced after the step
        self._seen_this_step = set()
        self._handles = []
        # the activation hooks are registered only while the current step is
        # sampled: a module with a forward hook takes PyTorch's slow call path
        # at every call, which costs a launch-bound (e.g. FSDP2) step ~1-2%
        self._act_targets: List[tuple] = []  # (module, tensor name)
        self._act_handles = []
        self._opt_patched = None
        self._in_step = False
        self._closed = False
        self._report_cache = None
        self._rule = rule
        self._rule_source = "given" if rule is not None else None
        self._groups = None                  # compute="device": one Watch per device/dtype
        self._had_grad: List[int] = []
        self._sample_idx: Dict[tuple, torch.Tensor] = {}
        self._sender: Optional[_Sender] = None
        # compute="daemon" from CUDA (_STAGE_ELEMS): the sender's staging
        # buffers, its copy stream, and the sampled steps' fetches in flight
        self._stage_bufs: List[torch.Tensor] = []
        self._copy_stream = None
        self._fetch_slots = threading.BoundedSemaphore(_FETCHES_MAX)
        self._send_errors: List[str] = []
        self._close_seconds = 0.0
        self._collectives = 0
        self._collective_seconds = 0.0
        # overhead accounting
        self._seconds = 0.0
        self._parts = {"fetch": 0.0, "send": 0.0, "stats": 0.0, "count": 0.0}
        self._fetch_wait = 0.0  # of fetch: waiting for a sampled step's fetch slot
        self._steps_seen = 0
        self._sampled_steps = 0
        self._snapshots = 0
        self._counted = 0
        self._records = 0
        self._bytes = 0
        self._t_open = time.perf_counter()
        self._attach(activations)

    # -- ranks ----------------------------------------------------------------
    @staticmethod
    def _ranks(client, process_group):
        """(rank, world_size, torch.distributed is initialized): from the
        process group when torch.distributed is initialized (the client must
        agree), else from the client (its rank= / world_size=, $RANK /
        $WORLD_SIZE), else 0 of 1."""
        dist = torch.distributed
        c_rank = getattr(client, "rank", None)
        c_world = getattr(client, "world_size", None)
        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank(process_group)
            world = dist.get_world_size(process_group)
            if rank < 0:
                raise ValueError("this process is not in process_group")
            if c_rank is not None and (c_rank, c_world) != (rank, world):
                raise ValueError(
                    f"the client is rank {c_rank} of {c_world} but torch.distributed makes "
                    f"this process rank {rank} of {world}: open the Client with "
                    "rank=torch.distributed.get_rank(), world_size=torch.distributed."
                    "get_world_size() (torchrun's $RANK and $WORLD_SIZE do that), or "
                    "altgrad.torch.distributed_client()")
            return rank, world, True
        if process_group is not None:
            raise ValueError("process_group needs torch.distributed initialized")
        if c_rank is not None and c_world is not None:
            return int(c_rank), int(c_world), False
        return 0, 1, False

    def _layouts(self, model, replicated):
        """(names of replicated tensors, names of sharded tensors) among the
        watched parameters; both empty with one rank. replicated: None
        (detected: a DistributedDataParallel model, DTensors replicated on
        every rank), True (every parameter), an iterable of fnmatch patterns
        on names, or a function (name, parameter) -> bool; what it marks is
        replicated on top of what is detected."""
        if replicated is not None and not (isinstance(replicated, bool) or callable(replicated)):
            if isinstance(replicated, str):
                replicated = [replicated]
            try:
                replicated = list(replicated)
            except TypeError:
                raise TypeError("replicated must be None, a bool, patterns or a function "
                                f"(name, parameter) -> bool, got {type(replicated).__name__}") \
                    from None
            if not all(isinstance(x, str) for x in replicated):
                raise TypeError("replicated patterns must be strings")
        rep_names, shard_names = set(), []
        if self.world_size <= 1:
            return rep_names, shard_names
        ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
        for name, p in self._params:
            if replicated is True or ddp:
                mark = True
            elif callable(replicated):
                mark = bool(replicated(name, p))
            elif isinstance(replicated, list):
                mark = any(fnmatch.fnmatchcase(name, pat) for pat in replicated)
            else:
                mark = False
            if not mark and _is_dtensor(p):
                mark = _dtensor_layout(name, p, self.world_size) == "replicated"
            if mark:
                rep_names.add(name)
            else:
                shard_names.append(name)
        return rep_names, shard_names

    def _rep_kw(self, name) -> dict:
        """The replicated= keyword of a snapshot of `name` (only with ranks)."""
        return {"replicated": True} if name in self._replicated else {}

    # -- wiring ---------------------------------------------------------------
    def _wanted(self, name: str) -> bool:
        if self.include is not None and not any(fnmatch.fnmatchcase(name, p)
                                                for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(name, p) for p in self.exclude)

    def _param_lrs(self):
        lrs = {}
        if self.optimizer is None:
            return lrs
        ids = {id(p): n for n, p in self._params}
        for gi, group in enumerate(self.optimizer.param_groups):
            for p in group["params"]:
                if id(p) in ids:
                    lrs[ids[id(p)]] = gi
        return lrs

    def _attach(self, activations):
        if activations:
            wanted = None if activations is True else set(activations)
            for name, mod in self.model.named_modules():
                if mod is self.model and len(list(mod.children())):
                    continue
                if wanted is None and len(list(mod.children())):
                    continue
                if wanted is not None and name not in wanted:
                    continue
                tname = self.prefix + (name or type(mod).__name__)
                self._act_targets.append((mod, tname))
            self._arm()
        opt = self.optimizer
        if opt is None:
            return
        if hasattr(opt, "register_step_pre_hook"):
            self._handles.append(opt.register_step_pre_hook(lambda *a, **k: self.before_step()))
            self._handles.append(opt.register_step_post_hook(lambda *a, **k: self.after_step()))
        else:
            original = opt.step

            def step(*args, **kwargs):
                self.before_step()
                try:
                    return original(*args, **kwargs)
                finally:
                    self.after_step()

            opt.step = step
            self._opt_patched = (original, step)

    @property
    def step(self) -> int:
        """The step being trained (advanced by after_step)."""
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step = value
        if "_act_targets" in self.__dict__:
            self._arm()

    def _arm(self) -> None:
        """Activation hooks on the watched modules while this step is sampled,
        none otherwise."""
        want = bool(self._act_targets) and not self._closed and self.sampling()
        if want and not self._act_handles:
            self._act_handles = [mod.register_forward_hook(self._forward_hook(tname))
                                 for mod, tname in self._act_targets]
        elif not want and self._act_handles:
            for h in self._act_handles:
                h.remove()
            self._act_handles = []

    def detach(self) -> None:
        """Remove every hook; the model and optimizer are as before."""
        for h in self._handles + self._act_handles:
            h.remove()
        self._handles = []
        self._act_handles = []
        self._act_targets = []
        if self._opt_patched is not None:
            original, ours = self._opt_patched
            if self.optimizer.__dict__.get("step") is ours:
                del self.optimizer.step
            else:  # someone wrapped it after us: leave theirs, make ours a no-op
                self._closed = True
            self._opt_patched = None

    # -- sampling -------------------------------------------------------------
    def sampling(self) -> bool:
        """Whether the current step is one that is logged."""
        if self.step < self.start or (self.stop is not None and self.step >= self.stop):
            return False
        return self.step % self.every == 0

    def _forward_hook(self, name):
        def hook(module, inputs, output):
            if self._closed or not module.training or not self.sampling():
                return
            if name in self._seen_this_step:
                return
            t = _first_tensor(output)
            if t is None or not t.is_floating_point():
                return
            t = _local(t)  # tensor parallel: this rank's part
            t0 = time.perf_counter()
            self._seen_this_step.add(name)
            self._queue_stats(name, _lib.AG_ROLE_ACTIVATION, t)
            self._seconds += time.perf_counter() - t0
        return hook

    def _queue_stats(self, name, role, t):
        t0 = time.perf_counter()
        self._queue_stats_now(name, role, t)
        self._parts["stats"] += time.perf_counter() - t0

    def _queue_stats_now(self, name, role, t):
        x = t.detach()
        if x.numel() == 0:
            return
        if x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous():
            self.client.log_stats(self.step, name, x, role=role)  # amax in C, no copy
            self._records += 1
        else:
            # kept until after the step, then reduced together (few launches,
            # one device-to-host copy); holds the tensor that long
            self._pending.append((name, role, x))

    def _flush_pending(self):
        if not self._pending:
            return
        t0 = time.perf_counter()
        pending, self._pending = self._pending, []
        tensors = [x for _, _, x in pending]
        step = self.step
        cuda = [x for x in tensors if x.device.type == "cuda"]
        if len(cuda) == len(tensors) and len({x.device for x in tensors}) == 1:
            # reduced on the device, fetched by the sender thread: no wait here
            norms = _norms(tensors)
            host = torch.empty(norms.shape, dtype=norms.dtype, pin_memory=True)
            host.copy_(norms, non_blocking=True)
            events = _device_events([norms.device])

            def job():
                _wait(events)
                self._log_amaxes(step, pending, host.tolist())

            self._send(job)
        else:
            self._log_amaxes(step, pending, _max_abs(tensors))
        self._records += len(pending)
        self._parts["stats"] += time.perf_counter() - t0

    def _log_amaxes(self, step, pending, amaxes):
        for (name, role, x), amax in zip(pending, amaxes):
            nonfinite = 0
            if not math.isfinite(amax):  # rare: NaN/inf present, count them exactly
                amax, nonfinite = _finite_stats(x).cpu().tolist()
            self.client.log_amax(step, name, role, amax, x.numel(), int(nonfinite))

    def _send(self, job):
        if self._sender is None:
            self._sender = _Sender()
        self._sender.submit(job)

    def _lr(self, name):
        if self.lr is not None:
            return float(self.lr)
        gi = self._lr_of.get(name)
        if gi is None:
            raise ValueError(f"parameter {name} is not in the optimizer; pass lr=")
        return float(self.optimizer.param_groups[gi]["lr"])

    def before_step(self) -> None:
        """Call right before the weights change (done for you with an optimizer)."""
        if self._closed or self._in_step:
            return
        self._in_step = True
        if not self.sampling():
            return
        t0 = time.perf_counter()
        self._sampled_steps += 1
        with torch.no_grad():
            if self.gradients:
                for name, p in self._params:
                    if p.grad is not None:
                        self._queue_stats(name + ".grad", _lib.AG_ROLE_GRADIENT,
                                          _local(p.grad))
            if self.compute == "device":
                self._device_before()
            else:
                batch = []
                for name, p in self._params:
                    if self.form == "update":
                        # kept even without a gradient yet: a closure (LBFGS)
                        # computes it inside step(); after_step sends only the
                        # parameters that had one by then
                        self._before[name] = self._sampled(name, _local(p).detach()).clone()
                    elif p.grad is not None:  # unused this step: no optimizer moves it
                        w = _local(p).detach()
                        batch.append((name, self._sampled(name, w),
                                      self._sampled(name, _local(p.grad).detach()),
                                      self._lr(name), w.numel()))
                self._send_batch(batch)
        self._seconds += time.perf_counter() - t0

    def after_step(self) -> None:
        """Call right after the weights changed (done for you with an optimizer)."""
        if self._closed or not self._in_step:
            return
        self._in_step = False
        self._steps_seen += 1
        if self.sampling():
            t0 = time.perf_counter()
            with torch.no_grad():
                if self.compute == "device":
                    self._device_after()
                elif self.form == "update":
                    batch = []
                    for name, p in self._params:
                        w0 = self._before.pop(name, None)
                        if w0 is not None and p.grad is not None:
                            w = _local(p).detach()
                            batch.append((name, w0, self._sampled(name, w) - w0, None,
                                          w.numel()))
                    self._send_batch(batch)
                self._flush_pending()
            self._seconds += time.perf_counter() - t0
        self._before.clear()
        self._seen_this_step.clear()
        self.step += 1

    # -- compute="device" ---------------------------------------------------------
    def _learn_rule_and_formats(self):
        """The daemon's scale rule and default formats from its status, once."""
        st = None
        if self._rule is None or self.formats is None or self.quant_error:
            status = getattr(self.client, "status", None)
            if status is not None:
                try:
                    st = status()
                except (AltgradError, OSError):
                    st = None
        if self._rule is None:
            if st is not None and st.get("history_len") is not None:
                self._rule, self._rule_source = _device.ScaleRule.from_status(st), "daemon"
            else:
                self._rule, self._rule_source = _device.ScaleRule(), "defaults"
        if self.formats is None:
            names = (st or {}).get("formats") or _lib.AG_DEFAULT_FORMATS
            self.formats = [f for f in str(names).split(",") if f]
        self._daemon_caps = int((st or {}).get("caps") or 0)

    def _build_groups(self):
        self._learn_rule_and_formats()
        groups = {}
        for i, (name, p) in enumerate(self._params):
            loc = _local(p)
            groups.setdefault((loc.device, loc.dtype), []).append(i)
        # The sharded tensors' slots in the amax all-reduce: in parameter
        # order, which is the same on every rank (a rank other than 0 only
        # lacks the replicated ones), whatever the device/dtype groups are.
        slot_of = {name: j for j, name in enumerate(self._sharded)}
        self._groups = []
        for (dev, dtype), idx in groups.items():
            if dtype not in (torch.float32, torch.bfloat16, torch.float16):
                wdtype = torch.float32  # other float types: counted in float32, as the
            else:                       # snapshot path sends them
                wdtype = dtype
            watch = _device.Watch([_local(self._params[i][1]).numel() for i in idx], wdtype,
                                  dev, self.formats, self._rule, fixed_scale=self.scale,
                                  flips=self.flips, qerr=self._sends_qerr())
            ks = [k for k, i in enumerate(idx) if self._params[i][0] in slot_of]
            slots = None
            if ks:
                js = [slot_of[self._params[idx[k]][0]] for k in ks]
                slots = (torch.tensor(ks, dtype=torch.int64, device=dev),
                         torch.tensor(js, dtype=torch.int64, device=dev))
            self._groups.append((idx, watch, slots))

    def _sends_qerr(self) -> bool:
        """The quantization error is computed and sent: asked for, and the
        daemon reads counts results with it (an older one refuses them)."""
        return self.quant_error and bool(self._daemon_caps & _lib.AG_CAP_QERR)

    def _device_before(self):
        if self._groups is None:
            self._build_groups()
        t0 = time.perf_counter()
        self._had_grad = [i for i, (_, p) in enumerate(self._params) if p.grad is not None]
        for idx, watch, _ in self._groups:
            ps = [_local(self._params[i][1]) for i in idx]
            watch.load_w(ps)
            if self.form == "sgd":
                gs = [self._params[i][1].grad for i in idx]
                watch.load_v([_local(g) if g is not None else torch.zeros_like(p)
                              for g, p in zip(gs, ps)])
        self._parts["fetch"] += time.perf_counter() - t0

    def _all_reduce_amax(self, work) -> None:
        """One MAX all-reduce, through the trainer's process group, of every
        sharded tensor's local amax and has-a-finite-element flag; each
        group's stats then hold the whole tensor's, so every rank scales (and
        keeps its amax history) as the whole tensor would. Every rank calls it
        at every sampled step with the same slots, whatever it computed."""
        n = len(self._sharded)
        dev = next((w.device for _, w, s in self._groups if s is not None), None)
        if dev is None:
            dev = torch.device("cpu")
        vec = torch.zeros(2 * n, dtype=torch.float32, device=dev)
        for _, _, _, slots, st, _ in work:
            if slots is None:
                continue
            ks, js = slots
            vec.index_copy_(0, js.to(dev), st["amax"].index_select(0, ks).to(dev))
            vec.index_copy_(0, js.to(dev) + n,
                            st["finite"].index_select(0, ks).to(device=dev,
                                                                dtype=torch.float32))
        t0 = time.perf_counter()
        torch.distributed.all_reduce(vec, op=torch.distributed.ReduceOp.MAX, group=self._pg)
        self._collective_seconds += time.perf_counter() - t0
        self._collectives += 1
        for _, _, watch, slots, st, _ in work:
            if slots is None:
                continue
            ks, js = slots
            got = vec.to(watch.device)
            st["amax"] = st["amax"].index_copy(0, ks, got.index_select(0, js))
            st["finite"] = st["finite"].index_copy(0, ks, got.index_select(0, js + n) > 0)

    def _device_after(self):
        t0 = time.perf_counter()
        if self.form == "update":
            # a closure optimizer (LBFGS) made its gradients inside step()
            have = {i for i, (_, p) in enumerate(self._params) if p.grad is not None}
        else:
            have = set(self._had_grad)
        work = []
        for idx, watch, slots in self._groups:
            which = [k for k, i in enumerate(idx) if i in have]
            if not which:
                continue
            if self.form == "update":
                watch.load_v([_local(self._params[i][1]) for i in idx], minus_w=True)
                neg = None
            else:
                neg = [self._lr(self._params[i][0]) for i in idx]
            t1 = time.perf_counter()
            self._parts["fetch"] += t1 - t0
            work.append((idx, which, watch, slots, watch.stats(which), neg))
            t0 = time.perf_counter()
            self._parts["count"] += t0 - t1
        if self._sharded:
            self._all_reduce_amax(work)
        t0 = time.perf_counter()
        jobs = []
        for idx, which, watch, _, st, neg in work:
            out = watch.count(which, st, update_form=self.form == "update", neg_lr=neg)
            jobs.append((idx, which, watch, self._to_host(out)))
        t1 = time.perf_counter()
        self._parts["count"] += t1 - t0
        step, form = self.step, self.form
        events = _device_events([w.device for _, _, w, _ in jobs])

        def job():
            _wait(events)
            for idx, which, watch, host in jobs:
                self._log_counts(step, form, idx, which, watch, host)

        if events:
            self._send(job)
        elif jobs:
            job()
        self._counted += sum(len(w) for _, w, _, _ in jobs)
        self._parts["send"] += time.perf_counter() - t1

    @staticmethod
    def _to_host(out):
        host = {}
        for k, v in out.items():
            if v.device.type == "cuda":
                h = torch.empty(v.shape, dtype=v.dtype, pin_memory=True)
                h.copy_(v, non_blocking=True)
                host[k] = h
            else:
                host[k] = v.clone()
        return host

    def _log_counts(self, step, form, idx, which, watch, host):
        # an empty local shard (FSDP gives one to a rank past a small
        # tensor's end) has nothing to send: the daemon takes no empty items
        which = [k for k in which if watch.numels[k] > 0]
        if not which:
            return
        sel = torch.tensor(which, dtype=torch.int64)
        counts = host["counts"].index_select(0, sel)
        names = [self._params[idx[k]][0] for k in which]
        flips = None
        if watch.flips:
            flips = _as_buffer(counts[:, :, 5].contiguous().view(-1))
        kw = {}
        if self._replicated:
            kw["replicated"] = [n in self._replicated for n in names]
        if "qerr" in host:
            kw["mse"], kw["sqnr_db"] = _qerr_values(
                host["qerr"].index_select(0, sel),
                torch.tensor([watch.numels[k] for k in which], dtype=torch.float64) -
                host["nonfinite"].index_select(0, sel).to(torch.float64))
        self.client.log_counts(
            step, names, watch.formats,
            _as_buffer(counts[:, :, :5].contiguous().view(-1)),
            _as_buffer(host["scales"].index_select(0, sel).contiguous().view(-1)),
            _as_buffer(host["amax"].index_select(0, sel).to(torch.float64)),
            [watch.numels[k] for k in which],
            _as_buffer(host["nonfinite"].index_select(0, sel)),
            flips=flips, form=form, **kw)

    # -- compute="daemon" ---------------------------------------------------------
    def _sampled(self, name, t: torch.Tensor) -> torch.Tensor:
        """t, or with sample_max the client's fixed subset of it, taken where t
        lives (so only the subset is ever copied)."""
        n = t.numel()
        if not self.sample_max or n <= self.sample_max or name in self._shard_set:
            return t  # a shard goes whole (the daemon sums the shards' counts)
        key = (n, t.device)
        idx = self._sample_idx.get(key)
        if idx is None:
            seed = getattr(self.client, "sample_seed", 0) or 0
            idx = torch.tensor(sample_indices(n, self.sample_max, seed), dtype=torch.int64,
                               device=t.device)
            self._sample_idx[key] = idx
        return t.reshape(-1).index_select(0, idx)

    # staged on the CPU too when set (tests: the sender's path without a GPU)
    _STAGED_ON_CPU = False

    def _send_batch(self, batch):
        """Send (name, w, g_or_u, lr, numel) snapshots. Tensors that are not
        float32 on the CPU are packed into one flat float32 buffer where they
        live (on a GPU: a copy the optimizer step cannot change); from CUDA the
        sender thread fetches it (_stage_and_log) once it is ready, so the
        training step neither waits for the device-to-host copy nor pins
        memory."""
        if not batch:
            return
        on_host = all(t.device.type == "cpu" and t.dtype == torch.float32
                      for _, w, x, _, _ in batch for t in (w, x))
        t0 = time.perf_counter()
        kw = {}
        if self.scale is not None:
            kw["scale"] = self.scale
        if self.formats is not None:
            kw["formats"] = self.formats
        step = self.step
        if on_host and not self._STAGED_ON_CPU:
            pairs = [(w.contiguous(), x.contiguous()) for _, w, x, _, _ in batch]
            self._log_snapshots(step, batch, pairs, kw)
            self._parts["send"] += time.perf_counter() - t0
            return
        staged = batch[0][1].device.type == "cuda" or self._STAGED_ON_CPU
        if not staged:  # float32 on the CPU: logged from views of one flat copy
            flat = torch.cat([t.reshape(-1).to(torch.float32)
                              for _, w, x, _, _ in batch for t in (w, x)])
            pairs, off = [], 0
            for _, w, _, _, _ in batch:
                n = w.numel()
                pairs.append((flat[off:off + n], flat[off + n:off + 2 * n]))
                off += 2 * n
            self._parts["fetch"] += time.perf_counter() - t0
            self._log_snapshots(step, batch, pairs, kw)
            return
        # at most _FETCHES_MAX sampled steps' copies wait for the sender; a
        # slot goes back with its job, or here if the job never goes
        w0 = time.perf_counter()
        self._fetch_slots.acquire()
        self._fetch_wait += time.perf_counter() - w0
        handed = False
        try:
            flat = torch.cat([t.reshape(-1).to(torch.float32)
                              for _, w, x, _, _ in batch for t in (w, x)])
            events = _device_events([flat.device])
            self._parts["fetch"] += time.perf_counter() - t0

            def job():
                try:
                    _wait(events)
                    self._stage_and_log(step, batch, flat, kw)
                finally:
                    self._fetch_slots.release()

            self._send(job)
            handed = True
        finally:
            if not handed:
                self._fetch_slots.release()

    def _staging(self, elems: int, pin: bool) -> List[torch.Tensor]:
        """The sender's two host buffers of at least elems float32 each."""
        if not self._stage_bufs or self._stage_bufs[0].numel() < elems:
            self._stage_bufs = []  # the smaller ones go first
            self._stage_bufs = [torch.empty(elems, dtype=torch.float32, pin_memory=pin)
                                for _ in range(2)]
        return self._stage_bufs

    def _stage_and_log(self, step, batch, flat, kw):
        """Sender thread: the snapshots packed in flat (w then g or u, tensor
        after tensor) to the client, through the staging buffers: tensors
        grouped to fill one buffer, group k + 1 copying into one buffer while
        the client reads group k from the other. From CUDA the copies run on a
        stream of their own, so they do not queue behind the training's work."""
        sizes = [2 * w.numel() for _, w, _, _, _ in batch]
        cap = max(_STAGE_ELEMS, max(sizes))
        groups, start, fill = [], 0, 0  # (first, end) tensor indices
        for i, sz in enumerate(sizes):
            if fill + sz > cap:
                groups.append((start, i))
                start, fill = i, 0
            fill += sz
        groups.append((start, len(sizes)))
        offs = [0]
        for sz in sizes:
            offs.append(offs[-1] + sz)
        cuda = flat.device.type == "cuda"
        bufs = self._staging(cap, cuda)
        stream = None
        if cuda:
            if self._copy_stream is None or self._copy_stream.device != flat.device:
                self._copy_stream = torch.cuda.Stream(device=flat.device)
            stream = self._copy_stream

        def fetch(k):
            a, b = offs[groups[k][0]], offs[groups[k][1]]
            dst = bufs[k % 2][:b - a]
            if stream is None:
                dst.copy_(flat[a:b])
                return None
            with torch.cuda.stream(stream):
                dst.copy_(flat[a:b], non_blocking=True)
                ev = torch.cuda.Event()
                ev.record(stream)
            return ev

        ready = fetch(0)
        for k, (first, end) in enumerate(groups):
            nxt = fetch(k + 1) if k + 1 < len(groups) else None
            if ready is not None:
                ready.synchronize()
            buf, base = bufs[k % 2], offs[first]
            pairs = []
            for i in range(first, end):
                n = sizes[i] // 2
                a = offs[i] - base
                pairs.append((buf[a:a + n], buf[a + n:a + 2 * n]))
            self._log_snapshots(step, batch[first:end], pairs, kw)
            ready = nxt

    def _log_snapshots(self, step, batch, pairs, kw):
        t0 = time.perf_counter()
        for (name, _, _, lr, numel), (w, x) in zip(batch, pairs):
            if w.numel() == 0:
                continue  # an empty local shard: nothing to send
            extra = dict(kw)
            if w.numel() != numel:
                extra["numel"] = numel  # sampled on the device: the whole tensor's size
            extra.update(self._rep_kw(name))
            if lr is None:
                self.client.log_update(step, name, w, x, **extra)
            else:
                self.client.log_sgd(step, name, w, x, lr, **extra)
            self._snapshots += 1
            self._bytes += 8 * w.numel()
        self._parts["send"] += time.perf_counter() - t0

    # -- the end ----------------------------------------------------------------
    def report(self) -> dict:
        """What the Monitor cost: seconds inside its hooks, per training step
        and per sampled step, against the wall time since it was attached,
        split by part."""
        if self._report_cache is not None:
            return dict(self._report_cache)
        wall = time.perf_counter() - self._t_open
        steps = max(self._steps_seen, 1)
        return {
            "steps": self._steps_seen,
            "sampled_steps": self._sampled_steps,
            "every": self.every,
            "form": self.form,
            "compute": self.compute,
            # torch.distributed: this process's rank and the world (of the
            # process group), how many watched tensors are sharded (counted on
            # the local shard, amax all-reduced) and replicated (rank 0 logs
            # them); the all-reduces and their seconds on the training thread
            # (with NCCL the time to queue them: they run on the device)
            "rank": self.rank,
            "world_size": self.world_size,
            "sharded": len(self._sharded),
            "replicated": len(self._replicated),
            "collectives": self._collectives,
            "collective_seconds": self._collective_seconds,
            "formats": list(self.formats) if self.formats is not None else None,
            "scale_rule": (dict(self._rule.as_dict(), source=self._rule_source)
                           if self._rule is not None else None),
            "snapshots": self._snapshots,
            "counted": self._counted,
            "stat_records": self._records,
            "snapshot_bytes": self._bytes,
            "monitor_seconds": self._seconds,
            "wall_seconds": wall,
            "overhead_fraction": self._seconds / wall if wall > 0 else 0.0,
            "ms_per_step": 1000.0 * self._seconds / steps,
            "ms_per_sampled_step": (1000.0 * self._seconds / self._sampled_steps
                                    if self._sampled_steps else 0.0),
            # where the time went, on the training thread: copies of w and u
            # (device buffers, or device-to-host for snapshots), launching the
            # counting kernels, handing results to the client or its sender
            # thread, amax statistics
            "fetch_seconds": self._parts["fetch"],
            # of fetch: waiting for the sender thread to take one of the
            # sampled steps' device copies it still has (compute="daemon" from
            # CUDA, more than _FETCHES_MAX behind)
            "fetch_wait_seconds": self._fetch_wait,
            "count_seconds": self._parts["count"],
            "send_seconds": self._parts["send"],
            "stats_seconds": self._parts["stats"],
            # close(): sending what was pending and waiting for the daemon to
            # confirm it (not part of the per-step cost above)
            "close_seconds": self._close_seconds,
            "send_errors": list(self._send_errors),
        }

    def close(self, flush_timeout_ms: int = 5000) -> dict:
        """Detach, send what is pending, flush the client (not close it) and
        return report(), with "flushed" (the daemon confirmed everything) and
        the client's "delivered" / "undelivered" counts at that point (None
        when the client cannot say); with verbose=True it is also printed."""
        if self._report_cache is not None:
            return dict(self._report_cache)
        self.detach()
        t0 = time.perf_counter()
        self._flush_pending()
        if self._sender is not None:
            errors = self._sender.close()
            self._sender = None
            self._send_errors = [f"{type(e).__name__}: {e}" for e in errors]
        flushed = True
        try:
            self.client.flush(flush_timeout_ms)
        except AltgradError as e:
            # the daemon absent, slow or losing messages (or the client
            # already closed) must not crash the trainer at the end of its
            # run: report it instead
            if e.code not in (_lib.AG_ETIMEDOUT, _lib.AG_ECLOSED, _lib.AG_ELOST,
                              _lib.AG_ETRANSPORT):
                raise
            flushed = False
        delivered = undelivered = None
        stats = getattr(self.client, "stats", None)
        if stats is not None:
            try:
                st = stats()
                delivered, undelivered = st.get("delivered"), st.get("undelivered")
            except AltgradError:
                pass  # closed: it has said what it had to at its close
        self._close_seconds = time.perf_counter() - t0
        self._closed = True
        rep = self.report()
        rep["flushed"] = flushed
        rep["delivered"] = delivered
        rep["undelivered"] = undelivered
        self._report_cache = rep
        if self.verbose:
            print(format_report(rep))
        return dict(rep)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def distributed_client(ingest_url: str = None, query_url: str = None, run: str = None, *,
                       process_group=None, **kw):
    """An altgrad.Client whose rank and world_size are this process's in
    torch.distributed's process_group (default: the world), for a Monitor
    with the same process_group. The other arguments are Client's; the ranks
    of one run must share its name and launch id (torchrun's
    $TORCHELASTIC_RUN_ID, else $ALTGRAD_LAUNCH_ID, else launch_id=)."""
    from .client import Client
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("distributed_client needs torch.distributed initialized")
    return Client(ingest_url, query_url, run, rank=dist.get_rank(process_group),
                  world_size=dist.get_world_size(process_group), **kw)


def format_report(rep: dict) -> str:
    line = (f"altgrad monitor: {rep['steps']} steps, {rep['sampled_steps']} sampled "
            f"(every {rep['every']}, {rep['form']} form), {rep['snapshots']} snapshots, "
            f"{rep['stat_records']} stat records; {rep['monitor_seconds']:.3f}s in hooks "
            f"= {100 * rep['overhead_fraction']:.1f}% of {rep['wall_seconds']:.2f}s, "
            f"{rep['ms_per_step']:.2f} ms/step, {rep['ms_per_sampled_step']:.2f} ms/sampled step "
            f"(fetch {rep['fetch_seconds']:.3f}s, send {rep['send_seconds']:.3f}s, "
            f"stats {rep['stats_seconds']:.3f}s)")
    if rep.get("world_size", 1) > 1:
        line += (f"; rank {rep['rank']} of {rep['world_size']}, {rep['sharded']} sharded, "
                 f"{rep['replicated']} replicated, {rep['collectives']} all-reduces "
                 f"{rep['collective_seconds']:.3f}s")
    if rep.get("undelivered") is not None:  # after close(): what the daemon confirmed
        line += f"; delivered {rep['delivered']}, undelivered {rep['undelivered']}"
    return line


__all__ = ["Monitor", "ScaleRule", "distributed_client", "format_report", "sample_indices",
           "stall_counts"]

ScaleRule = _device.ScaleRule
