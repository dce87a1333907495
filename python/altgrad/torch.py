"""altgrad.torch.Monitor: stream a PyTorch model's snapshots to altgradd.

Attach it to a model and its optimizer. Every `every` optimizer steps it sends,
per parameter, the weights with either the gradient and learning rate (SGD
form) or the update the optimizer really applied, u = w_after - w_before
(update form, right for Adam and anything else); and the amax of every leaf
module's output through forward hooks. Its own cost is timed and reported.
"""

from __future__ import annotations

import math
import time
from typing import Dict, Iterable, List, Optional

import torch

from . import _device, _lib
from .errors import AltgradError

_FORMS = ("update", "sgd")


def stall_counts(w: torch.Tensor, x: torch.Tensor, formats, scales, form: str = "update",
                 lr=None) -> Dict[str, Dict[str, int]]:
    """Counts of one snapshot, computed where w lives, bit for bit as the C
    core (and so the daemon) computes them: {format: {"stalled", "total",
    "overflow", "underflow", "nonfinite"}} (ints).

    w: the weights; x: the update u = w_new - w (form="update", any
    optimizer) or the gradient g (form="sgd", with the learning rate `lr`:
    u = -lr * g). float32, bfloat16 or float16 (widened exactly), same shape,
    same device (CPU or CUDA). formats: a name or a list of names; scales: one
    number for all, a list (one per format) or a dict {format: scale}; each
    positive and finite in float32. On CUDA one fused kernel counts every
    format in one pass (Triton; eager torch where Triton is missing)."""
    return _device.stall_counts(w, x, formats, scales, form=form, lr=lr)


def _finite_stats(t: torch.Tensor) -> torch.Tensor:
    """[max |x| over finite elements (0 if none), count of NaN/inf] on t's
    device, float64, without a host sync."""
    x = t.detach()
    finite = torch.isfinite(x)
    mag = torch.where(finite, x.abs(), torch.zeros((), dtype=x.dtype, device=x.device))
    amax = mag.amax() if x.numel() else torch.zeros((), device=x.device)
    return torch.stack([amax.to(torch.float64), (~finite).sum().to(torch.float64)])


def _max_abs(tensors: List[torch.Tensor]) -> List[float]:
    """max |x| of each tensor (NaN/inf when it holds any), computed with a
    fused multi-tensor kernel where PyTorch has one, fetched in one copy."""
    try:
        norms = torch._foreach_norm(tensors, math.inf)
    except (RuntimeError, AttributeError, TypeError):
        norms = [torch.linalg.vector_norm(t, math.inf) for t in tensors]
    devices = {n.device for n in norms}
    if len(devices) == 1:
        return torch.stack([n.to(torch.float64) for n in norms]).cpu().tolist()
    return [float(n) for n in norms]


def _first_tensor(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            if isinstance(o, torch.Tensor):
                return o
    return None


class Monitor:
    """Streams per-parameter snapshots and activation amax of `model` through
    `client` (an altgrad.Client) every `every` optimizer steps.

    form: "update" (default; w before the step and u = w_after - w_before, any
          optimizer) or "sgd" (w and the gradient with the param group's lr, or
          `lr` if given; the daemon predicts the update as -lr * g).
    activations: hook every leaf module's forward and log its output's amax
          (role activation) on sampled steps; or an iterable of module names.
    gradients: also log each gradient's amax (role gradient) on sampled steps.
    step: the step number of the first training step (default 0); it grows
          by one at every optimizer.step().
    scale / formats: passed with every snapshot (None: the daemon's scales
          from its amax history, and its default formats).

    Without an optimizer, call before_step() and after_step() around your own
    update. close() (or leaving a `with` block) detaches, flushes and returns
    report(), the overhead summary, with how many of the client's messages the
    daemon confirmed ("delivered") and not ("undelivered").
    """

    def __init__(self, client, model: torch.nn.Module, optimizer=None, *, every: int = 10,
                 form: str = "update", lr: Optional[float] = None, activations=True,
                 gradients: bool = True, step: int = 0, prefix: str = "",
                 scale: Optional[float] = None, formats: Optional[Iterable[str]] = None,
                 verbose: bool = False):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if form not in _FORMS:
            raise ValueError(f"form must be one of {_FORMS}, got {form!r}")
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if form == "sgd" and optimizer is None and lr is None:
            raise ValueError("form='sgd' needs an optimizer or an explicit lr")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        self.client = client
        self.model = model
        self.optimizer = optimizer
        self.every = every
        self.form = form
        self.lr = lr
        self.gradients = gradients
        self.step = step
        self.prefix = prefix
        self.scale = scale
        self.formats = list(formats) if formats is not None else None
        self.verbose = verbose
        self._params = [(prefix + n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._lr_of = self._param_lrs()
        self._before: Dict[str, torch.Tensor] = {}
        self._pending: List[tuple] = []      # (name, role, tensor) reduced after the step
        self._seen_this_step = set()
        self._handles = []
        self._opt_patched = None
        self._in_step = False
        self._closed = False
        self._report_cache = None
        # overhead accounting
        self._seconds = 0.0
        self._parts = {"fetch": 0.0, "send": 0.0, "stats": 0.0}  # inside _seconds
        self._pinned = None
        self._steps_seen = 0
        self._sampled_steps = 0
        self._snapshots = 0
        self._records = 0
        self._bytes = 0
        self._t_open = time.perf_counter()
        self._attach(activations)

    # -- wiring ---------------------------------------------------------------
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
                self._handles.append(mod.register_forward_hook(self._forward_hook(tname)))
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

    def detach(self) -> None:
        """Remove every hook; the model and optimizer are as before."""
        for h in self._handles:
            h.remove()
        self._handles = []
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
        tensors = [x for _, _, x in self._pending]
        amaxes = _max_abs(tensors)
        for (name, role, x), amax in zip(self._pending, amaxes):
            nonfinite = 0
            if not math.isfinite(amax):  # rare: NaN/inf present, count them exactly
                amax, nonfinite = _finite_stats(x).cpu().tolist()
            self.client.log_amax(self.step, name, role, amax, x.numel(), int(nonfinite))
            self._records += 1
        self._pending = []
        self._parts["stats"] += time.perf_counter() - t0

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
            batch = []
            for name, p in self._params:
                if self.form == "update":
                    # kept even without a gradient yet: a closure (LBFGS)
                    # computes it inside step(); after_step sends only the
                    # parameters that had one by then
                    self._before[name] = p.detach().clone()
                if p.grad is None:  # unused this step: no optimizer moves it
                    continue
                if self.gradients:
                    self._queue_stats(name + ".grad", _lib.AG_ROLE_GRADIENT, p.grad)
                if self.form == "sgd":
                    batch.append((name, p.detach(), p.grad.detach(), self._lr(name)))
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
                if self.form == "update":
                    batch = []
                    for name, p in self._params:
                        w0 = self._before.pop(name, None)
                        if w0 is not None and p.grad is not None:
                            batch.append((name, w0, p.detach() - w0, None))
                    self._send_batch(batch)
                self._flush_pending()
            self._seconds += time.perf_counter() - t0
        self._before.clear()
        self._seen_this_step.clear()
        self.step += 1

    def _send_batch(self, batch):
        """Send (name, w, g_or_u, lr) snapshots. Tensors that are not float32
        on the CPU are packed into one flat buffer and fetched with a single
        device-to-host copy; the client then reads slices of it in place."""
        if not batch:
            return
        on_host = all(t.device.type == "cpu" and t.dtype == torch.float32
                      for _, w, x, _ in batch for t in (w, x))
        t0 = time.perf_counter()
        if on_host:
            pairs = [(w.contiguous(), x.contiguous()) for _, w, x, _ in batch]
        else:
            flat = torch.cat([t.reshape(-1).to(torch.float32)
                              for _, w, x, _ in batch for t in (w, x)])
            host = self._host_buffer(flat)
            pairs, off = [], 0
            for _, w, _, _ in batch:
                n = w.numel()
                pairs.append((host[off:off + n], host[off + n:off + 2 * n]))
                off += 2 * n
        t1 = time.perf_counter()
        self._parts["fetch"] += t1 - t0
        kw = {}
        if self.scale is not None:
            kw["scale"] = self.scale
        if self.formats is not None:
            kw["formats"] = self.formats
        for (name, _, _, lr), (w, x) in zip(batch, pairs):
            if lr is None:
                self.client.log_update(self.step, name, w, x, **kw)
            else:
                self.client.log_sgd(self.step, name, w, x, lr, **kw)
            self._snapshots += 1
            self._bytes += 8 * w.numel()
        self._parts["send"] += time.perf_counter() - t1

    def _host_buffer(self, flat: torch.Tensor) -> torch.Tensor:
        """flat copied to host memory: a reused pinned buffer for CUDA tensors
        (a fast DMA; the client copies out before the next sampled step)."""
        if flat.device.type != "cuda":
            return flat.cpu()
        n = flat.numel()
        if self._pinned is None or self._pinned.numel() < n:
            try:
                self._pinned = torch.empty(n, dtype=torch.float32, pin_memory=True)
            except RuntimeError:
                return flat.cpu()
        host = self._pinned[:n]
        host.copy_(flat)
        return host

    # -- the end ----------------------------------------------------------------
    def report(self) -> dict:
        """What the Monitor cost: seconds inside its hooks, per training step
        and per sampled step, against the wall time since it was attached."""
        if self._report_cache is not None:
            return dict(self._report_cache)
        wall = time.perf_counter() - self._t_open
        steps = max(self._steps_seen, 1)
        return {
            "steps": self._steps_seen,
            "sampled_steps": self._sampled_steps,
            "every": self.every,
            "form": self.form,
            "snapshots": self._snapshots,
            "stat_records": self._records,
            "snapshot_bytes": self._bytes,
            "monitor_seconds": self._seconds,
            "wall_seconds": wall,
            "overhead_fraction": self._seconds / wall if wall > 0 else 0.0,
            "ms_per_step": 1000.0 * self._seconds / steps,
            "ms_per_sampled_step": (1000.0 * self._seconds / self._sampled_steps
                                    if self._sampled_steps else 0.0),
            # where the time went: device-to-host fetch of snapshots, the
            # client's logging calls (copy into its send queue), amax stats
            "fetch_seconds": self._parts["fetch"],
            "send_seconds": self._parts["send"],
            "stats_seconds": self._parts["stats"],
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
        self._seconds += time.perf_counter() - t0
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


def format_report(rep: dict) -> str:
    line = (f"altgrad monitor: {rep['steps']} steps, {rep['sampled_steps']} sampled "
            f"(every {rep['every']}, {rep['form']} form), {rep['snapshots']} snapshots, "
            f"{rep['stat_records']} stat records; {rep['monitor_seconds']:.3f}s in hooks "
            f"= {100 * rep['overhead_fraction']:.1f}% of {rep['wall_seconds']:.2f}s, "
            f"{rep['ms_per_step']:.2f} ms/step, {rep['ms_per_sampled_step']:.2f} ms/sampled step "
            f"(fetch {rep['fetch_seconds']:.3f}s, send {rep['send_seconds']:.3f}s, "
            f"stats {rep['stats_seconds']:.3f}s)")
    if rep.get("undelivered") is not None:  # after close(): what the daemon confirmed
        line += f"; delivered {rep['delivered']}, undelivered {rep['undelivered']}"
    return line


__all__ = ["Monitor", "format_report", "stall_counts"]
