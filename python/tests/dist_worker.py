"""One rank of the 2-process torch.distributed (gloo, CPU) runs of
test_monitor_ranks.py: python3 dist_worker.py CONFIG_JSON, with $RANK and
$WORLD_SIZE set. For each scenario it trains a tiny model with a Monitor for
a few steps and writes what the test compares:

- mode "shard": a two-layer MLP split by hand the tensor-parallel way (the
  first layer's rows and the second layer's columns are this rank's; the
  output all-reduced), rank 1's weights larger so the whole tensor's amax is
  not rank 0's; the last bias is the same on every rank and marked
  replicated=. The expected counts are those of the gathered whole tensors
  (the shards concatenated) at the scale of the whole tensors' amax history.
- mode "dtensor": the MLP whole on every rank, its parameters answering like
  DTensors sharded by rows (the last bias like a Replicate one): the Monitor
  counts each rank's rows; the expected counts are the whole tensors'.
- mode "ddp": the MLP in DistributedDataParallel; the expected counts are one
  rank's tensors (every rank holds the same).

client "fake" records the Monitor's calls to the client (out.rankN.json);
client "daemon" logs to the altgradd at cfg["ingest"] / cfg["query"]. Rank 0
writes the expected counts to out.expected.json.
"""

from __future__ import annotations

import datetime
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.distributed.nn.functional as dist_fn  # noqa: E402

from altgrad._device import check_scale  # noqa: E402
from altgrad.quantization import AmaxHistory, compute_scale, get_format  # noqa: E402
from altgrad.torch import Monitor, stall_counts  # noqa: E402

COUNT_KEYS = ("stalled", "total", "overflow", "underflow", "nonfinite")


class Recorder:
    """A client that keeps what the Monitor hands it (for the "fake" runs)."""

    def __init__(self, rank, world_size):
        self.rank, self.world_size = rank, world_size
        self.counts = []
        self.snapshots = []
        self.stat_rows = []

    def log_counts(self, step, tensors, formats, counts, scales, amax, numel, nonfinite,
                   flips=None, form="update", replicated=False):
        f = len(formats)
        counts, scales = list(counts), list(scales)
        amax, numel, nonfinite = list(amax), list(numel), list(nonfinite)
        reps = (list(replicated) if isinstance(replicated, (list, tuple))
                else [bool(replicated)] * len(tensors))
        for t, name in enumerate(tensors):
            for k, fmt in enumerate(formats):
                row = counts[(t * f + k) * 5:(t * f + k + 1) * 5]
                self.counts.append({
                    "step": step, "tensor": name, "format": fmt, "form": form,
                    "counts": [int(x) for x in row], "scale": float(scales[t * f + k]),
                    "amax": float(amax[t]), "numel": int(numel[t]),
                    "nonfinite": int(nonfinite[t]), "replicated": bool(reps[t])})
        return True

    def _snap(self, step, tensor, w, x, lr=None, replicated=False, **kw):
        self.snapshots.append({"step": step, "tensor": tensor, "n": int(w.numel()),
                               "numel": kw.get("numel"), "replicated": bool(replicated)})
        return True

    def log_update(self, step, tensor, w, u, **kw):
        return self._snap(step, tensor, w, u, **kw)

    def log_sgd(self, step, tensor, w, g, lr, **kw):
        return self._snap(step, tensor, w, g, lr, **kw)

    def log_stats(self, step, tensor, x, role="activation"):
        self.stat_rows.append({"step": step, "tensor": tensor, "role": str(role),
                           "numel": int(x.numel())})
        return True

    def log_amax(self, step, tensor, role, amax, numel, nonfinite=0):
        self.stat_rows.append({"step": step, "tensor": tensor, "role": str(role),
                           "numel": int(numel)})
        return True

    def flush(self, timeout_ms=0):
        pass


class ShardedMLP(torch.nn.Module):
    """y = W2 tanh(W1 x + b1) + b2 with W1, b1 split by rows and W2 by columns
    over the ranks (each rank holds its part as a plain parameter); b2 is the
    same on every rank."""

    def __init__(self, rank, world, d_in=6, hidden=16, d_out=4):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w1 = torch.randn(hidden, d_in, generator=g) * 0.3
        b1 = torch.randn(hidden, generator=g) * 0.1
        w2 = torch.randn(d_out, hidden, generator=g) * 0.3
        # the second rank's half is larger: the whole tensor's amax is on rank 1
        gain = torch.ones(hidden)
        gain[hidden // 2:] = 4.0
        w1, b1, w2 = w1 * gain[:, None], b1 * gain, w2 * gain[None, :]
        part = hidden // world
        rows = slice(rank * part, (rank + 1) * part)
        self.w1 = torch.nn.Parameter(w1[rows].clone())
        self.b1 = torch.nn.Parameter(b1[rows].clone())
        self.w2 = torch.nn.Parameter(w2[:, rows].clone())
        self.b2 = torch.nn.Parameter(torch.randn(d_out, generator=g) * 0.1)

    def forward(self, x):
        h = torch.tanh(x @ self.w1.t() + self.b1)
        y = dist_fn.all_reduce(h @ self.w2.t())
        return y + self.b2


def plain_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 4))


class _Placement:
    """A DTensor placement's interface (is_shard / is_replicate / is_partial)."""

    def __init__(self, kind):
        self.kind = kind

    def is_shard(self):
        return self.kind == "shard"

    def is_replicate(self):
        return self.kind == "replicate"

    def is_partial(self):
        return False

    def __repr__(self):
        return self.kind.capitalize() + "()"


class _Mesh:
    def __init__(self, n):
        self.n = n

    def size(self):
        return self.n


def dtensor_like_mlp(rank, world):
    """plain_mlp (the same on every rank, trained the same way) whose
    parameters answer like DTensors sharded on dim 0 over the ranks: to_local()
    is this rank's rows (a view, so it sees the optimizer's updates); the last
    bias answers like a Replicate one. The second half of each tensor's rows
    is larger: the whole tensor's amax is on rank 1. Debian's PyTorch has no
    DTensor: this walks the Monitor's DTensor path on the CPU."""
    model = plain_mlp()
    with torch.no_grad():
        for p in model.parameters():
            p[p.shape[0] // 2:] *= 4.0
    for name, p in model.named_parameters():
        if name == "2.bias":
            p.placements = (_Placement("replicate"),)
            p.to_local = (lambda p=p: p)
        else:
            part = p.shape[0] // world
            p.placements = (_Placement("shard"),)
            p.to_local = (lambda p=p, a=rank * part, b=(rank + 1) * part: p.data[a:b])
        p.device_mesh = _Mesh(world)
    return model


def run(cfg, rank, world):
    """One scenario: train with a Monitor, write this rank's results (and on
    rank 0 the expected rows) under cfg["out"]."""
    mode, steps, every = cfg["mode"], cfg["steps"], cfg["every"]
    formats = cfg["formats"]
    kw = {}
    if mode == "shard":
        model = ShardedMLP(rank, world)
        kw["replicated"] = ["b2"]
        wrapped = model
    elif mode == "dtensor":
        wrapped = model = dtensor_like_mlp(rank, world)
    else:
        model = plain_mlp()
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(wrapped.parameters(), lr=cfg.get("lr", 2e-2))
    if cfg["client"] == "fake":
        client = Recorder(rank, world)
    else:
        from altgrad import Client
        client = Client(ingest_url=cfg["ingest"], query_url=cfg["query"], run=cfg["run"],
                        launch_id=cfg["launch"], rank=rank, world_size=world)
    mon = Monitor(client, wrapped, opt, every=every, compute=cfg["compute"],
                  formats=formats, activations=cfg.get("activations", False),
                  gradients=cfg.get("gradients", False), flips=cfg.get("flips", False), **kw)
    names = [n for n, _ in wrapped.named_parameters()]
    hist = {n: AmaxHistory(16) for n in names}
    expected = []
    torch.manual_seed(1)  # the same data on every rank (DDP: the same gradients anyway)
    x, y = torch.randn(32, 6), torch.randn(32, 4)
    for step in range(steps):
        loss = torch.nn.functional.mse_loss(wrapped(x), y)
        opt.zero_grad()
        loss.backward()
        before = {n: p.detach().clone() for n, p in wrapped.named_parameters()}
        opt.step()
        if step % every:
            continue
        for n, p in wrapped.named_parameters():
            w, u = before[n], p.detach() - before[n]
            if mode == "shard" and n != "b2":  # the shards, gathered
                ws, us = [None] * world, [None] * world
                dist.all_gather_object(ws, w.reshape(-1))
                dist.all_gather_object(us, u.reshape(-1))
                w, u = torch.cat(ws), torch.cat(us)
            if rank != 0:
                continue
            amax = float(w.abs().max())
            hist[n].push(amax)
            scales = {f: check_scale(compute_scale(hist[n].get_amax(), get_format(f)))
                      for f in formats}
            got = stall_counts(w, u, formats, scales)
            for f in formats:
                expected.append({"step": step, "tensor": n, "format": f,
                                 "counts": [got[f][k] for k in COUNT_KEYS],
                                 "scale": scales[f], "amax": amax, "numel": w.numel()})
    rep = mon.close()
    out = cfg["out"]
    with open(f"{out}.rank{rank}.json", "w") as f:
        json.dump({"report": rep,
                   "counts": getattr(client, "counts", None),
                   "snapshots": getattr(client, "snapshots", None),
                   "stats": getattr(client, "stat_rows", None)}, f)
    if rank == 0:
        with open(f"{out}.expected.json", "w") as f:
            json.dump(expected, f)
    if cfg["client"] != "fake":
        client.close()
    dist.barrier()


def main():
    """argv[1]: {"init": rendezvous URL, "runs": [scenario config, ...]}: one
    process group (importing torch is the slow part), the scenarios in turn."""
    cfg = json.loads(sys.argv[1])
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=cfg["init"], rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    for scenario in cfg["runs"]:
        run(scenario, rank, world)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
