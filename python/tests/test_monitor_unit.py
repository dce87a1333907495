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
    mon = Monitor(rec, model, opt, every=2)
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
    with Monitor(rec, model, opt, every=3) as mon:
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


def test_sgd_form_sends_gradients_with_the_group_learning_rate():
    model = tiny_model()
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.5},
                           {"params": model[2].parameters(), "lr": 0.25}])
    rec = Recorder()
    with Monitor(rec, model, opt, every=1, form="sgd", activations=False, gradients=False):
        train(model, opt, 1)
    sgd = rec.of("sgd")
    assert {c[2]: c[5] for c in sgd} == {"0.weight": 0.5, "0.bias": 0.5,
                                         "2.weight": 0.25, "2.bias": 0.25}
    assert rec.of("stats") == []


def test_activation_and_gradient_amax_are_logged_with_their_roles():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = Recorder()
    with Monitor(rec, model, opt, every=1):
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
    mon = Monitor(rec, model, opt, every=1)
    mon.close()
    assert "step" not in opt.__dict__
    assert all(not m._forward_hooks for m in model.modules())
    train(model, opt, 2)
    assert rec.calls == []


def test_manual_steps_without_an_optimizer():
    model = tiny_model()
    rec = Recorder()
    with Monitor(rec, model, every=1, activations=False, gradients=False) as mon:
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
    with Monitor(rec, model, opt, every=1, activations=False, gradients=False):
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
    with Monitor(rec, model, opt, every=1, gradients=False):
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

    with Monitor(rec, model, opt, every=1, activations=False, gradients=False) as mon:
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
    with Monitor(rec, model, opt, every=1, activations=False, gradients=False):
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
        mon = Monitor(client, model, opt, every=1)
        train(model, opt, 2)
        rep = mon.close(flush_timeout_ms=10)  # nobody will ever take the queue
        assert rep["flushed"] is False and rep["steps"] == 2
        assert mon.report()["flushed"] is False
        # nothing confirmed: everything the client queued is undelivered so far
        assert rep["delivered"] == 0 and rep["undelivered"] == client.stats()["undelivered"] > 0
        assert f"undelivered {rep['undelivered']}" in format_report(rep)
