"""The Monitor's staged fetch on CUDA (compute="daemon"): every snapshot the
client gets equals the tensors at the moment of the step, in update and SGD
form, with a staging buffer smaller than the model (several groups, one
tensor larger than a buffer) and at the default size; and what it costs the
training thread against a plain fetch-per-step copy.

  python3 bench/gpu_staged_check.py
"""
import sys
import time

import torch

import altgrad.torch as agt
from altgrad.torch import Monitor


class Recorder:
    def __init__(self):
        self.calls = []

    def log_update(self, step, tensor, w, u, **kw):
        self.calls.append((step, tensor, w.clone(), u.clone()))

    def log_sgd(self, step, tensor, w, g, lr, **kw):
        self.calls.append((step, tensor, w.clone(), g.clone(), lr))

    def log_amax(self, *a, **k):
        pass

    def log_stats(self, *a, **k):
        pass

    def flush(self, timeout_ms=0):
        pass


def check(form, stage_elems):
    agt._STAGE_ELEMS = stage_elems
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(512, 2048), torch.nn.GELU(),
                                torch.nn.Linear(2048, 512), torch.nn.Linear(512, 7)).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    rec = Recorder()
    seen = {}
    mon = Monitor(rec, model, opt, compute="daemon", form=form, every=2,
                  lr=1e-3 if form == "sgd" else None)
    orig = opt.step

    def spy(*a, **k):  # wraps the Monitor's hook: the same moment
        seen[mon.step] = {n: (p.detach().cpu().clone(), p.grad.detach().cpu().clone())
                          for n, p in model.named_parameters()}
        out = orig(*a, **k)
        for n, p in model.named_parameters():
            seen[mon.step - 1][n] += (p.detach().cpu().clone(),)
        return out

    opt.step = spy
    x, y = torch.randn(64, 512, device="cuda"), torch.randn(64, 7, device="cuda")
    for _ in range(6):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rep = mon.close()
    bad = 0
    for c in rec.calls:
        step, name = c[0], c[1]
        w0, g, w1 = seen[step][name]
        if form == "sgd":
            ok = torch.equal(c[2], w0.reshape(-1)) and torch.equal(c[3], g.reshape(-1))
        else:
            # u = w_after - w_before, one IEEE subtraction on either device
            ok = torch.equal(c[2], w0.reshape(-1)) and torch.equal(c[3], (w1 - w0).reshape(-1))
        bad += not ok
    n = len(rec.calls)
    print(f"{form} form, staging {stage_elems} float32: {n} snapshots, {bad} differ; "
          f"staging buffers {[b.numel() for b in mon._stage_bufs]}; "
          f"fetch {rep['fetch_seconds'] * 1e3:.1f} ms (waiting {rep['fetch_wait_seconds'] * 1e3:.1f})")
    return bad == 0 and n == 3 * 6


ok = all([check("update", 1 << 20), check("sgd", 1 << 20), check("update", 16 << 20),
          check("sgd", 16 << 20)])
print("staged fetch on CUDA:", "OK" if ok else "MISMATCH")
sys.exit(0 if ok else 1)
