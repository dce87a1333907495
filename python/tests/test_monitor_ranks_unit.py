"""altgrad.torch.Monitor's rank bookkeeping in one process, through a
recording client that says which rank it is: which tensors are shards and
which replicated, what rank 0 and the other ranks send, and the setups it
refuses. (Two real ranks: test_monitor_ranks.py.)"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist

from altgrad.torch import Monitor, format_report
from dist_worker import _Mesh, _Placement


class RankRecorder:
    def __init__(self, rank, world_size):
        self.rank, self.world_size = rank, world_size
        self.snapshots, self.counts = [], []

    def log_update(self, step, tensor, w, u, **kw):
        self.snapshots.append((tensor, w.numel(), kw))

    def log_sgd(self, step, tensor, w, g, lr, **kw):
        self.snapshots.append((tensor, w.numel(), kw))

    def log_counts(self, step, tensors, formats, counts, scales, amax, numel, nonfinite,
                   flips=None, form="update", **kw):
        self.counts.append((list(tensors), list(numel), kw))

    def log_stats(self, *a, **k):
        pass

    def log_amax(self, *a, **k):
        pass

    def flush(self, timeout_ms=0):
        pass


def mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def train(model, opt, steps=1):
    x, y = torch.randn(16, 4), torch.randn(16, 2)
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_without_torch_distributed_the_clients_rank_is_used_and_shards_go_whole():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = RankRecorder(1, 2)
    mon = Monitor(rec, model, opt, compute="daemon", every=1, sample_max=4,
                  activations=False, gradients=False, replicated=["2.*"])
    train(model, opt)
    rep = mon.close()
    assert (rep["rank"], rep["world_size"]) == (1, 2)
    assert rep["sharded"] == 2 and rep["replicated"] == 2 and rep["collectives"] == 0
    assert "rank 1 of 2, 2 sharded, 2 replicated" in format_report(rep)
    # rank 1 leaves the replicated tensors to rank 0; shards are not sampled
    assert [(n, k) for n, k, _ in rec.snapshots] == [("0.weight", 32), ("0.bias", 8)]
    assert all(kw.get("replicated") is None and "numel" not in kw
               for _, _, kw in rec.snapshots)


def test_rank_0_sends_the_replicated_tensors_marked():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = RankRecorder(0, 2)
    Monitor(rec, model, opt, compute="daemon", every=1, activations=False,
            gradients=False, replicated=lambda name, p: name.endswith("bias"))
    train(model, opt)
    marks = {n: kw.get("replicated", False) for n, _, kw in rec.snapshots}
    assert marks == {"0.weight": False, "0.bias": True, "2.weight": False, "2.bias": True}


def test_device_counts_of_replicated_tensors_need_no_collective():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = RankRecorder(0, 2)
    mon = Monitor(rec, model, opt, every=1, activations=False, gradients=False,
                  replicated=True, formats=["E5M2"])
    train(model, opt, 2)
    assert mon.close()["collectives"] == 0
    assert len(rec.counts) == 2
    for names, numel, kw in rec.counts:
        assert names == ["0.weight", "0.bias", "2.weight", "2.bias"]
        assert numel == [32, 8, 16, 2] and kw["replicated"] == [True] * 4
    other = RankRecorder(1, 2)
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    Monitor(other, model, opt, every=1, replicated=True, formats=["E5M2"])
    train(model, opt)
    assert other.counts == [] and other.snapshots == []


def test_a_single_rank_sends_no_replicated_keyword():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = RankRecorder(0, 1)
    Monitor(rec, model, opt, every=1, replicated=True, formats=["E5M2"],
            activations=False, gradients=False)
    train(model, opt)
    assert rec.counts and all(kw == {} for _, _, kw in rec.counts)


def test_refused_setups_say_why():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="needs torch.distributed initialized"):
        Monitor(RankRecorder(0, 2), model, opt)  # shards to count on the device
    with pytest.raises(ValueError, match="process_group needs torch.distributed"):
        Monitor(RankRecorder(0, 1), model, opt, process_group=object())
    with pytest.raises(TypeError, match="replicated"):
        Monitor(RankRecorder(0, 2), model, opt, compute="daemon", replicated=42)
    with pytest.raises(TypeError, match="patterns must be strings"):
        Monitor(RankRecorder(0, 2), model, opt, compute="daemon", replicated=[1])


@pytest.mark.parametrize("placements, mesh", [(("shard", "replicate"), 2), (("shard",), 4)])
def test_dtensors_sharded_over_part_of_the_ranks_are_refused(placements, mesh):
    model = mlp()
    p = model[0].weight
    p.placements = tuple(_Placement(k) for k in placements)
    p.device_mesh = _Mesh(mesh)
    p.to_local = lambda: p
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="parameter 0.weight is a DTensor"):
        Monitor(RankRecorder(0, 2), model, opt, compute="daemon")
    # excluded, it is not looked at
    Monitor(RankRecorder(0, 2), model, opt, compute="daemon", exclude=["0.weight"])


def test_a_client_of_another_rank_than_torch_distributed_says_is_refused():
    with tempfile.TemporaryDirectory(prefix="agrank1-") as d:
        dist.init_process_group("gloo", init_method="file://" + os.path.join(d, "rdv"),
                                rank=0, world_size=1)
        try:
            model = mlp()
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            with pytest.raises(ValueError, match="client is rank 0 of 2 but torch.distributed"):
                Monitor(RankRecorder(0, 2), model, opt)
            mon = Monitor(RankRecorder(0, 1), model, opt, formats=["E5M2"])
            train(model, opt)
            rep = mon.close()
            assert (rep["rank"], rep["world_size"], rep["collectives"]) == (0, 1, 0)
        finally:
            dist.destroy_process_group()


def test_an_empty_local_shard_is_said_at_start():
    model = mlp()
    p = model[2].bias
    p.placements = (_Placement("shard"),)
    p.device_mesh = _Mesh(2)
    p.to_local = lambda: p.data[2:]  # rank 1 of a 2-element tensor chunked as 2 + 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    rec = RankRecorder(1, 2)
    with pytest.warns(RuntimeWarning, match="rank 1 holds no element of 2.bias"):
        Monitor(rec, model, opt, compute="daemon", activations=False)
    train(model, opt)  # and it trains on, sending what it has
    assert [n for n, _, _ in rec.snapshots] == ["0.weight", "0.bias", "2.weight"]
