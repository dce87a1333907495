"""altgrad.torch.Monitor's own bookkeeping, observed through a recording
client: which steps are sampled, what w and u it sends, hooks and their
removal. (The Monitor against a real daemon is in test_monitor.py.)"""

import math

import pytest
import torch

from altgrad import _lib
from altgrad.torch import Monitor, format_report


class Recorder:
    """Records what the Monitor hands to the client (copies, for checking)."""

    def __init__(self):
        self.calls = []
        self.flushes = 0

    def log_update(self, step, tensor, w, u, **kw):
        self.calls.append(("update", step, tensor, w.clone(), u.clone(), kw))

    def log_sgd(self, step, tensor, w, g, lr, **kw):
        self.calls.append(("sgd", step, tensor, w.clone(), g.clone(), lr, kw))

    def log_stats(self, step, tensor, x, role="activation"):
        x = x.detach()
        fin = torch.isfinite(x)
        amax = float(x[fin].abs().max()) if fin.any() else 0.0
        self.calls.append(("stats", step, tensor, role, amax, x.numel(), int((~fin).sum())))

    def log_amax(self, step, tensor, role, amax, numel, nonfinite=0):
        self.calls.append(("stats", step, tensor, role, amax, numel, nonfinite))

    def flush(self, timeout_ms=0):
        self.flushes += 1

    def of(self, kind):
        return [c for c in self.calls if c[0] == kind]


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def train(model, opt, steps):
    x = torch.randn(16, 4)
    y = torch.randn(16, 2)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_update_form_sends_weights_before_the_step_and_the_real_update():
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    rec = Recorder()
    mon = Monitor(rec, model, opt, compute="daemon", every=2)
    before = {}
    orig_step = opt.step

    def spy(*a, **k):
        before.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return orig_step(*a, **k)

    # a spy wrapped around the Monitor's hook sees the weights at the same moment
    opt.step = spy
    train(model, opt, 1)
    del opt.step
    ups = rec.of("update")
    assert [c[2] for c in ups] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    params = dict(model.named_parameters())
    for _, step, name, w, u, _ in ups:
        assert step == 0
        assert torch.equal(w, before[name])
        assert torch.equal(w + u, params[name].detach())
    mon.close()


def test_only_every_kth_step_is_sampled():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder()
    with Monitor(rec, model, opt, compute="daemon", every=3) as mon:
        train(model, opt, 7)
        assert mon.step == 7
    assert sorted({c[1] for c in rec.of("update")}) == [0, 3, 6]
    assert sorted({c[1] for c in rec.of("stats")}) == [0, 3, 6]
    rep = mon.report()
    assert rep["steps"] == 7 and rep["sampled_steps"] == 3 and rep["snapshots"] == 12
    assert rep["monitor_seconds"] > 0 and rec.flushes == 1
    assert "7 steps" in format_report(rep)
    # a client without stats() cannot say what was delivered: the report does not guess
    assert rep["delivered"] is None and rep["undelivered"] is None
    assert "undelivered" not in format_report(rep)


def test_activation_hooks_exist_only_while_the_step_is_sampled():
    # a forward hook puts every call of its module on PyTorch's slow path:
    # unsampled steps must run the model as if no Monitor were attached
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder()
    hooked = lambda: sum(len(m._forward_hooks) for m in model.modules())  # noqa: E731
    seen = []
    orig = model[0].forward

    def forward(x):
        seen.append(hooked())
        return orig(x)

    model[0].forward = forward
    with Monitor(rec, model, opt, compute="daemon", every=3, start=3, stop=9) as mon:
        assert hooked() == 0  # step 0 is before start
        train(model, opt, 10)
        assert mon.step == 10 and hooked() == 0
        mon.step = 6  # a step set by hand re-arms them
        assert hooked() == 3
        mon.step = 7
        assert hooked() == 0
    # the leaves 0, 1 and 2 are hooked at steps 3 and 6 only
    assert seen == [0, 0, 0, 3, 0, 0, 3, 0, 0, 0]
    assert sorted({c[1] for c in rec.of("stats") if c[3] == _lib.AG_ROLE_ACTIVATION}) == [3, 6]
    assert hooked() == 0


def test_sgd_form_sends_gradients_with_the_group_learning_rate():
    model = tiny_model()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.5},
                           {"params": model[2].parameters(), "lr": 0.25}])
    rec = Recorder()
    with Monitor(rec, model, opt, compute="daemon", every=1, form="sgd", activations=False, gradients=False):
        train(model, opt, 1)
    sgd = rec.of("sgd")
    assert {c[2]: c[5] for c in sgd} == {"0.weight": 0.5, "0.bias": 0.5,
                                         "2.weight": 0.25, "2.bias": 0.25}
    assert rec.of("stats") == []


def test_activation_and_gradient_amax_are_logged_with_their_roles():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder()
    with Monitor(rec, model, opt, compute="daemon", every=1):
        train(model, opt, 1)
    stats = {c[2]: c for c in rec.of("stats")}
    assert {"0", "1", "2"} <= set(stats)
    assert stats["1"][3] == _lib.AG_ROLE_ACTIVATION
    assert stats["0.weight.grad"][3] == _lib.AG_ROLE_GRADIENT
    x_out = model[0](torch.zeros(1, 4))
    assert stats["0"][5] == 16 * 8 and x_out.shape[1] == 8
    assert stats["1"][4] >= 0 and not math.isnan(stats["1"][4])


def test_close_removes_every_hook_and_restores_the_optimizer():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder()
    mon = Monitor(rec, model, opt, compute="daemon", every=1)
    mon.close()
    assert "step" not in opt.__dict__
    assert all(not m._forward_hooks for m in model.modules())
    train(model, opt, 2)
    assert rec.calls == []


def test_manual_steps_without_an_optimizer():
    model = tiny_model()
    rec = Recorder()
    with Monitor(rec, model, compute="daemon", every=1, activations=False, gradients=False) as mon:
        for _ in range(2):
            loss = model(torch.randn(3, 4)).sum()
            model.zero_grad()
            loss.backward()
            mon.before_step()
            with torch.no_grad():
                for p in model.parameters():
                    p -= 0.1 * p.grad
            mon.after_step()
    ups = rec.of("update")
    assert len(ups) == 8
    for _, _, _, w, u, _ in ups:
        assert torch.any(u != 0)


def test_monitor_misuse_raises():
    model = tiny_model()
    with pytest.raises(ValueError):
        Monitor(Recorder(), model, every=0)
    with pytest.raises(ValueError):
        Monitor(Recorder(), model, form="adam")
    with pytest.raises(ValueError):
        Monitor(Recorder(), model, form="sgd")  # no optimizer, no lr
    with pytest.raises(TypeError):
        Monitor(Recorder(), object())


def test_non_float32_parameters_are_packed_and_sent_as_float32():
    # float64 takes the same path as GPU tensors: one flat buffer, one copy
    model = tiny_model().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder()
    before = [p.detach().clone() for p in model.parameters()]
    with Monitor(rec, model, opt, compute="daemon", every=1, activations=False, gradients=False):
        x = torch.randn(16, 4, dtype=torch.float64)
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ups = rec.of("update")
    assert len(ups) == 4
    for (_, _, _, w, u, _), w0, p in zip(ups, before, model.parameters()):
        assert w.dtype == torch.float32 and w.numel() == p.numel()
        assert torch.equal(w, w0.reshape(-1).float())
        assert torch.equal(u, (p.detach() - w0).reshape(-1).float())


class Emit(torch.nn.Module):
    """Returns x plus fixed values with NaN and inf in them (float64: the
    reduced-on-device path)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))

    def forward(self, x):
        special = torch.tensor([1.0, float("inf"), -3.0, float("nan")], dtype=torch.float64)
        return torch.cat([x * self.scale, special])


def test_non_finite_activations_count_and_stay_out_of_amax():
    model = Emit()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder()
    with Monitor(rec, model, opt, compute="daemon", every=1, gradients=False):
        out = model(torch.tensor([0.5, -2.0], dtype=torch.float64))
        opt.zero_grad()
        out[:2].sum().backward()
        opt.step()
    (stat,) = rec.of("stats")
    assert stat[3] == _lib.AG_ROLE_ACTIVATION
    assert (stat[4], stat[5], stat[6]) == (3.0, 6, 2)


def test_update_form_with_a_closure_optimizer_sends_the_first_step():
    # LBFGS computes the gradients inside step(closure): before the first
    # step no parameter has one, yet the step moves them all
    model = tiny_model()
    opt = torch.optim.LBFGS(model.parameters(), lr=0.1, max_iter=2)
    rec = Recorder()
    x, y = torch.randn(16, 4), torch.randn(16, 2)

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    with Monitor(rec, model, opt, compute="daemon", every=1, activations=False, gradients=False) as mon:
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.step(closure)
        assert mon.step == 1
    ups = rec.of("update")
    assert [c[2] for c in ups] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    params = dict(model.named_parameters())
    for _, step, name, w, u, _ in ups:
        assert step == 0
        assert torch.equal(w, before[name])
        assert torch.equal(w + u, params[name].detach())


def test_unused_parameters_are_not_sent_in_update_form():
    model = tiny_model()
    extra = torch.nn.Linear(2, 2)  # never used in forward: grad stays None
    model.add_module("unused", extra)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder()
    with Monitor(rec, model, opt, compute="daemon", every=1, activations=False, gradients=False):
        x, y = torch.randn(16, 4), torch.randn(16, 2)
        loss = torch.nn.functional.mse_loss(model[2](model[1](model[0](x))), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert [c[2] for c in rec.of("update")] == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_closing_without_a_daemon_reports_instead_of_raising(tmp_path):
    from altgrad import Client
    url = f"ipc://{tmp_path}/ingest.sock", f"ipc://{tmp_path}/query.sock"
    with Client(*url, run="no-daemon", close_timeout_ms=1) as client:
        model = tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mon = Monitor(client, model, opt, compute="daemon", every=1)
        train(model, opt, 2)
        rep = mon.close(flush_timeout_ms=10)  # nobody will ever take the queue
        assert rep["flushed"] is False and rep["steps"] == 2
        assert mon.report()["flushed"] is False
        # nothing confirmed: everything the client queued is undelivered so far
        assert rep["delivered"] == 0 and rep["undelivered"] == client.stats()["undelivered"] > 0
        assert f"undelivered {rep['undelivered']}" in format_report(rep)


# -- compute="device" ---------------------------------------------------------------

class CountRecorder(Recorder):
    """A client that takes counts and reports a daemon's scale rule."""

    def __init__(self, status=None):
        super().__init__()
        self._status = status

    def status(self):
        if self._status is None:
            from altgrad import TransportError
            raise TransportError(_lib.AG_ETRANSPORT, "no daemon")
        return dict(self._status)

    def log_counts(self, step, tensors, formats, counts, scales, amax, numel, nonfinite,
                   flips=None, form="update", replicated=False, mse=None, sqnr_db=None):
        T, F = len(tensors), len(formats)
        counts = [int(v) for v in list(counts)]
        scales = [float(v) for v in list(scales)]
        flips = None if flips is None else [int(v) for v in list(flips)]
        mse = None if mse is None else [float(v) for v in list(mse)]
        sqnr_db = None if sqnr_db is None else [float(v) for v in list(sqnr_db)]
        for t, name in enumerate(tensors):
            for f, fmt in enumerate(formats):
                c = dict(zip(("stalled", "total", "overflow", "underflow", "nonfinite"),
                             counts[(t * F + f) * 5:(t * F + f) * 5 + 5]))
                self.calls.append(("counts", step, name, fmt, c, scales[t * F + f],
                                   float(list(amax)[t]), int(list(numel)[t]),
                                   int(list(nonfinite)[t]),
                                   None if flips is None else flips[t * F + f], form,
                                   None if mse is None else mse[t * F + f],
                                   None if sqnr_db is None else sqnr_db[t * F + f]))


def _twin_runs(form, steps=4, device="cpu", caps=0, **kw):
    """The same training twice: snapshots (compute="daemon") and counts
    (compute="device"), with the daemon rule history_len 2, margin 1."""
    status = {"formats": "E5M2,E3M4", "history_len": 2, "amax_mode": "max",
              "scale_mode": "current", "margin": 1, "scale_min": 1e-10, "caps": caps}
    out = []
    for compute in ("daemon", "device"):
        model = tiny_model().to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.05) if form == "sgd" else \
            torch.optim.Adam(model.parameters(), lr=0.01)
        rec = CountRecorder(status)
        extra = {"flips": True} if compute == "device" else {}
        with Monitor(rec, model, opt, compute=compute, every=1, form=form, activations=False,
                     gradients=False, **extra, **kw) as mon:
            x = torch.randn(16, 4, device=device)
            y = torch.randn(16, 2, device=device)
            for _ in range(steps):
                loss = torch.nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        out.append((rec, mon.report()))
    return out


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("form", ["update", "sgd"])
def test_device_counts_equal_the_c_core_on_the_snapshots(form, device):
    from altgrad import _device
    from altgrad.quantization import get_format
    from altgrad.quantization import stall_counts as c_counts
    (snaps, _), (counted, rep) = _twin_runs(form, device=device)
    assert rep["compute"] == "device" and rep["counted"] == 16 and rep["snapshots"] == 0
    assert rep["scale_rule"]["source"] == "daemon" and rep["scale_rule"]["history_len"] == 2
    assert rep["formats"] == ["E5M2", "E3M4"]
    got = {(c[1], c[2], c[3]): c for c in counted.of("counts")}
    assert len(got) == 4 * 4 * 2
    hist, prev = {}, {}
    for call in snaps.of(form):
        step, name, w, x = call[1], call[2], call[3].cpu(), call[4].cpu()
        lr = call[5] if form == "sgd" else 0.0
        h = hist.setdefault(name, [])
        h.append(float(w.abs().max()))
        for fmt in ("E5M2", "E3M4"):
            g = got[step, name, fmt]
            mf = get_format(fmt).max_representable_value
            assert g[5] == _device._f32(max(max(h[-2:]) / mf, 1e-10) * 2.0)
            assert g[4] == c_counts(w, x, lr, get_format(fmt), g[5], update=(form == "update"))
            assert g[6] == h[-1] and g[7] == w.numel() and g[8] == 0 and g[10] == form
            assert g[9] == (0 if (name, fmt) not in prev else g[9]) and g[9] >= 0
            prev[name, fmt] = g[5]


def _c_qerr(fmt, scale, w):
    lib = _lib.lib()
    import ctypes
    w = w.contiguous()
    p = lib.ag_format_get(fmt.encode())
    fmts = (ctypes.POINTER(_lib.ag_format) * 1)(p)
    sc = (ctypes.c_float * 1)(scale)
    q = _lib.ag_quant_error()
    assert lib.ag_quant_error_multi(fmts, sc, 1, w.data_ptr(), w.numel(), ctypes.byref(q)) == 0
    return lib.ag_quant_mse(ctypes.byref(q)), lib.ag_quant_sqnr_db(ctypes.byref(q))


BLOCKED = ["MXFP4", "NVFP4", "MXFP8_E4M3"]
ELEMENT = {"MXFP4": "E2M1", "NVFP4": "E2M1", "MXFP8_E4M3": "E4M3"}


def _block_qerr_ref(fmt, scale, w):
    """mse and sqnr_db of w under a block-scaled format, written from
    docs/numerics.md with the C core for each block's divisor
    (ag_block_scale) and the element grid (ag_quantize at scale 1): per block
    sum (Q(w / d) - w / d)^2 * d^2 (w^2 where d is 0), over the finite w."""
    import ctypes
    lib = _lib.lib()
    p, elem = lib.ag_format_get(fmt.encode()), lib.ag_format_get(ELEMENT[fmt].encode())
    B, mf = p.contents.block, elem.contents.max_finite
    w = w.contiguous().reshape(-1)
    err = sig = 0.0
    n = 0
    for lo in range(0, w.numel(), B):
        blk = w[lo:lo + B].contiguous()
        d = ctypes.c_float()
        assert lib.ag_block_scale(p, scale, blk.data_ptr(), blk.numel(), ctypes.byref(d)) == 0
        fin = torch.isfinite(blk)
        n += int(fin.sum())
        sig += float((blk[fin].double() ** 2).sum())
        if d.value == 0:
            err += float((blk[fin].double() ** 2).sum())
            continue
        xs = blk / torch.tensor(d.value)  # float32, IEEE
        q = torch.empty_like(xs)
        assert lib.ag_quantize_checked(elem, 1.0, xs.data_ptr(), q.data_ptr(), xs.numel()) == 0
        q = torch.where(q.abs() > mf, torch.copysign(torch.full_like(q, mf), q), q)
        e = float(((q.double() - xs.double())[fin] ** 2).sum())
        err += e * (d.value * d.value)
    mse = err / n if n else math.nan
    sqnr = 10 * math.log10(sig / err) if err > 0 and sig > 0 else math.nan
    return mse, sqnr


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
@pytest.mark.parametrize("form", ["update", "sgd"])
def test_device_counts_of_block_formats_and_the_quantization_error(form, device):
    """Block-scaled formats beside per-tensor ones, counted on the device:
    equal to core/block.c at the tensor scale of the rule (1 for MX, the
    history amax / (448 * 6) for NVFP4), flips unknown; the quantization
    error of each per-tensor format equal to ag_quant_error_multi's (to the
    order of the double sums), and of the block-scaled ones to their sums
    at the block divisors; block flips are counted (values: test_block_formats)."""
    import ctypes
    from altgrad import _device
    from altgrad.quantization import get_format
    from altgrad.quantization import stall_counts as c_counts
    fmts = ["E5M2", "E4M3"] + BLOCKED + ["BF16-unscaled"]
    (snaps, _), (counted, rep) = _twin_runs(form, device=device, caps=_lib.AG_CAP_QERR,
                                             formats=fmts)
    assert rep["formats"] == fmts
    got = {(c[1], c[2], c[3]): c for c in counted.of("counts")}
    assert len(got) == 4 * 4 * len(fmts)
    hist = {}
    lib = _lib.lib()
    for call in snaps.of(form):
        step, name, w, x = call[1], call[2], call[3].cpu(), call[4].cpu()
        lr = call[5] if form == "sgd" else 0.0
        h = hist.setdefault(name, [])
        h.append(float(w.abs().max()))
        for fmt in fmts:
            g = got[step, name, fmt]
            if fmt in BLOCKED:
                want_s = 1.0 if fmt != "NVFP4" else _device._f32(
                    max(max(h[-2:]) / 2688.0, 1e-10) * 2.0)
                assert g[5] == want_s, (fmt, g[5], want_s)
                c = _lib.ag_stall_counts()
                wc, xc = w.contiguous(), x.contiguous()
                p = lib.ag_format_get(fmt.encode())
                if form == "sgd":
                    rc = lib.ag_block_stall_sgd(p, g[5], lr, wc.data_ptr(), xc.data_ptr(),
                                                wc.numel(), ctypes.byref(c))
                else:
                    rc = lib.ag_block_stall_update(p, g[5], wc.data_ptr(), xc.data_ptr(),
                                                   wc.numel(), ctypes.byref(c))
                assert rc == 0
                assert g[4] == {"stalled": c.stalled, "total": c.total, "overflow": c.overflow,
                                "underflow": c.underflow, "nonfinite": c.nonfinite}, fmt
                # flips at the previous step's block scales (test_block_formats.py
                # checks their values): none at the first step
                assert g[9] >= 0 and (step > 0 or g[9] == 0), (fmt, step, g[9])
                mse, sqnr = _block_qerr_ref(fmt, g[5], w)
                assert g[11] == pytest.approx(mse, rel=1e-12, abs=0), (fmt, name, step)
                assert g[12] == pytest.approx(sqnr, abs=1e-9), (fmt, name, step)
                continue
            assert g[4] == c_counts(w, x, lr, get_format(fmt), g[5], update=(form == "update"))
            mse, sqnr = _c_qerr(fmt, g[5], w)
            assert g[11] == pytest.approx(mse, rel=1e-12, abs=0), (fmt, name, step)
            if math.isnan(sqnr):
                assert math.isnan(g[12])
            else:
                assert g[12] == pytest.approx(sqnr, abs=1e-9), (fmt, name, step)
    assert any(c[11] > 0 for c in counted.of("counts") if c[3] == "E5M2")


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_the_quantization_error_goes_only_to_a_daemon_that_reads_it(device):
    (_, _), (counted, _) = _twin_runs("update", device=device, caps=_lib.AG_CAP_BUNDLE)
    assert all(c[11] is None and c[12] is None for c in counted.of("counts"))
    (_, _), (counted, _) = _twin_runs("update", device=device, caps=_lib.AG_CAP_QERR,
                                      quant_error=False)
    assert all(c[11] is None and c[12] is None for c in counted.of("counts"))
    (_, _), (counted, _) = _twin_runs("update", device=device, caps=_lib.AG_CAP_QERR)
    assert all(c[11] > 0 and c[12] > 0 for c in counted.of("counts"))
    # block-scaled formats alone (the sum of w^2 then comes from their kernel)
    (snaps, _), (counted, _) = _twin_runs("update", device=device, caps=_lib.AG_CAP_QERR,
                                          formats=BLOCKED)
    calls = counted.of("counts")
    assert len(calls) == 4 * 4 * len(BLOCKED)
    assert all(c[11] > 0 and c[12] > 0 and c[9] >= 0 for c in calls)
    w0 = {(c[1], c[2]): c[3].cpu() for c in snaps.of("update")}
    for c in calls:
        mse, sqnr = _block_qerr_ref(c[3], c[5], w0[c[1], c[2]])
        assert c[11] == pytest.approx(mse, rel=1e-12) and c[12] == pytest.approx(sqnr, abs=1e-9)


def test_device_counts_without_a_daemon_use_the_default_rule_and_formats():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = CountRecorder(None)
    with Monitor(rec, model, opt, every=2, activations=False) as mon:
        train(model, opt, 3)
    rep = mon.report()
    assert rep["scale_rule"]["source"] == "defaults" and rep["scale_rule"]["history_len"] == 16
    assert rep["formats"] == _lib.AG_DEFAULT_FORMATS.split(",")
    calls = rec.of("counts")
    assert {c[1] for c in calls} == {0, 2} and len(calls) == 2 * 4 * 5
    assert all(c[9] is None for c in calls)  # flips not asked for: unknown
    assert {c[2] for c in rec.of("stats")} == {"0.weight.grad", "0.bias.grad", "2.weight.grad",
                                              "2.bias.grad"}


def test_include_exclude_start_and_stop_choose_what_is_watched():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = CountRecorder(None)
    with Monitor(rec, model, opt, every=1, activations=False, gradients=False,
                 include=["*.weight", "2.*"], exclude=["0.*"], start=1, stop=3,
                 formats=["E5M2"]):
        train(model, opt, 5)
    calls = rec.of("counts")
    assert {c[2] for c in calls} == {"2.weight", "2.bias"}
    assert sorted({c[1] for c in calls}) == [1, 2]
    with pytest.raises(ValueError):
        Monitor(rec, model, start=3, stop=2)
    with pytest.raises(ValueError):
        Monitor(rec, model, compute="gpu")
    with pytest.raises(ValueError):
        Monitor(rec, model, compute="device", sample_max=10)
    with pytest.raises(ValueError):
        Monitor(rec, model, compute="daemon", flips=True)


def test_sample_max_takes_the_clients_subset_on_the_device():
    from altgrad.torch import sample_indices
    # the indices are the client's (client/log.c gather_sample), checked
    # against the daemon in test_monitor.py; here: strata and determinism
    idx = sample_indices(1000, 64)
    assert len(idx) == 64 and idx == sample_indices(1000, 64)
    q, r = divmod(1000, 64)  # one index in each stratum, in order
    assert all(k * q + min(k, r) <= i < k * q + min(k, r) + q + (k < r)
               for k, i in enumerate(idx))
    assert sample_indices(1000, 64, seed=7) != idx
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with Monitor(rec, model, opt, compute="daemon", every=1, activations=False,
                 gradients=False, sample_max=5):
        train(model, opt, 1)
    ups = {c[2]: c for c in rec.of("update")}
    w = before["0.weight"].reshape(-1)
    sel = sample_indices(32, 5)
    assert torch.equal(ups["0.weight"][3], w[sel])
    assert ups["0.weight"][5] == {"numel": 32}
    assert ups["2.bias"][5] == {}  # 2 elements: whole


def staged_model():
    """Tensors of 6 + 24, 96 + 24 ... elements: several to a staging group, and
    one (the 32 x 48 weight) larger than the smallest staging buffer."""
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 48),
                               torch.nn.Linear(48, 32), torch.nn.Linear(32, 1))


@pytest.mark.parametrize("stage_elems", [64, 1 << 20])
def test_staged_fetch_hands_over_every_tensor_exactly_in_order(monkeypatch, stage_elems):
    """The sender thread's fetch (compute="daemon" from CUDA), run on the CPU:
    groups of tensors through the two reused buffers, one grown for a tensor
    larger than them; what the client gets is what it would get directly, in
    the same order, and nothing it holds aliases the training's tensors."""
    import altgrad.torch as agt
    monkeypatch.setattr(agt, "_STAGE_ELEMS", stage_elems)
    monkeypatch.setattr(Monitor, "_STAGED_ON_CPU", True)
    runs = {}
    for staged in (True, False):
        monkeypatch.setattr(Monitor, "_STAGED_ON_CPU", staged)
        model = staged_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        rec = Recorder()
        with Monitor(rec, model, opt, compute="daemon", form="sgd", every=2) as mon:
            x, y = torch.randn(8, 3), torch.randn(8, 1)
            for _ in range(5):
                loss = torch.nn.functional.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            bufs = [b.numel() for b in mon._stage_bufs]
        runs[staged] = (rec.of("sgd"), mon.report(), bufs)
    got, rep, bufs = runs[True]
    want, _, nobufs = runs[False]
    assert nobufs == []  # the direct path stages nothing
    assert [c[1:3] for c in got] == [c[1:3] for c in want]
    assert len(got) == 3 * 8  # steps 0, 2, 4; 8 tensors
    for a, b in zip(got, want):
        # (the direct path hands over each tensor in its shape, the staged one flat)
        assert torch.equal(a[3], b[3].reshape(-1)) and torch.equal(a[4], b[4].reshape(-1))
        assert a[5] == b[5]
    # two buffers, grown (when the smallest) to the largest tensor's w and g
    largest = max(2 * p.numel() for p in staged_model().parameters())
    assert bufs == [max(stage_elems, largest)] * 2
    assert rep["snapshots"] == 24 and rep["fetch_wait_seconds"] >= 0.0


def test_staged_fetches_wait_for_the_sender_beyond_the_bound(monkeypatch):
    """At most _FETCHES_MAX sampled steps' copies wait for the sender: with
    the client stalled, the next sampled step waits for a slot (its time is
    reported in fetch_wait_seconds), and every snapshot still arrives."""
    import threading
    import time

    import altgrad.torch as agt
    monkeypatch.setattr(Monitor, "_STAGED_ON_CPU", True)
    gate = threading.Event()

    class Slow(Recorder):
        def log_update(self, step, tensor, w, u, **kw):
            gate.wait(10)
            super().log_update(step, tensor, w, u, **kw)

    rec = Slow()
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mon = Monitor(rec, model, opt, compute="daemon", every=1, gradients=False,
                  activations=False)
    # steps 0 and 1 take both slots (the sender holds the first in log_update)
    train(model, opt, agt._FETCHES_MAX)
    done = threading.Event()

    def third():
        train(model, opt, 1)
        done.set()

    t = threading.Thread(target=third)
    t.start()
    time.sleep(0.3)
    assert not done.is_set(), "a third sampled step did not wait for a fetch slot"
    gate.set()
    t.join(10)
    assert done.is_set()
    rep = mon.close()
    assert rep["fetch_wait_seconds"] >= 0.2
    assert sorted({c[1] for c in rec.of("update")}) == [0, 1, 2]
    assert len(rec.of("update")) == 3 * 4


def test_a_staged_fetch_that_fails_gives_its_slot_back(monkeypatch):
    """A sampled step whose packing fails (device out of memory, say) raises
    to the trainer and does not keep its fetch slot: later steps neither wait
    for it nor lose snapshots."""
    import altgrad.torch as agt
    monkeypatch.setattr(Monitor, "_STAGED_ON_CPU", True)
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder()
    mon = Monitor(rec, model, opt, compute="daemon", every=1, gradients=False,
                  activations=False)
    real_cat, fail = torch.cat, {"left": agt._FETCHES_MAX}

    def failing_cat(*a, **k):
        if fail["left"] > 0:
            fail["left"] -= 1
            raise RuntimeError("out of memory (test)")
        return real_cat(*a, **k)

    monkeypatch.setattr(agt.torch, "cat", failing_cat)
    for _ in range(agt._FETCHES_MAX):  # as many failures as there are slots
        with pytest.raises(RuntimeError, match="out of memory"):
            train(model, opt, 1)
        mon._in_step = False  # the failed step's hook never ended it
    # every slot free again (else the next steps would wait forever)
    assert all(mon._fetch_slots.acquire(timeout=1) for _ in range(agt._FETCHES_MAX))
    for _ in range(agt._FETCHES_MAX):
        mon._fetch_slots.release()
    train(model, opt, 2)
    rep = mon.close()
    assert len(rec.of("update")) == 2 * 4 and rep["fetch_wait_seconds"] < 5
