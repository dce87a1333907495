"""altgrad.torch.Monitor on a tiny model for a few steps against a real
altgradd: every parameter's snapshots, gradient and activation amax come
back through the queries at the sampled steps."""

import pytest
import torch

from altgrad.torch import Monitor, format_report
from daemon_fixture import eventually


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def train(model, opt, steps):
    torch.manual_seed(1)
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_monitor_streams_update_snapshots_and_amax_of_a_tiny_model(daemon):
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    with daemon.client("monitor-adam") as c:
        with Monitor(c, model, opt, compute="daemon", every=2) as mon:
            train(model, opt, 6)
        rep = mon.report()
        assert rep["steps"] == 6 and rep["sampled_steps"] == 3 and rep["snapshots"] == 12
        # close flushed until the daemon confirmed everything the run sent
        assert rep["flushed"] is True and rep["undelivered"] == 0 and rep["delivered"] > 12
        assert "undelivered 0" in format_report(rep)
        names = {"0.weight", "0.bias", "2.weight", "2.bias", "0", "1", "2",
                 "0.weight.grad", "0.bias.grad", "2.weight.grad", "2.bias.grad"}
        ts = eventually(lambda: (lambda t: t if {x["name"] for x in t} == names
                                 and all(x["last_step"] == 4 for x in t) else None)(
            c.tensors()["tensors"]), what="every tensor at step 4")
        roles = {t["name"]: t["role"] for t in ts}
        assert roles["0.weight"] == "weight" and roles["1"] == "activation"
        assert roles["2.bias.grad"] == "gradient"
        assert 0 < {t["name"]: t for t in ts}["1"]["last_amax"] <= 1.0  # a Tanh output
        for fmt in ("E5M2", "E3M4"):
            h = c.history("0.weight", format=fmt)
            assert [p["step"] for p in h["points"]] == [0, 2, 4]
            # Adam moves every weight with a gradient each step
            assert all(p["total"] == 6 * 16 for p in h["points"])
        # at lr 1e-3 the updates are far below E5M2's spacing near the weights
        worst = c.top(format="E5M2")
        assert worst["tensors"][0]["stall_rate"] > 0.5


def test_monitor_in_sgd_form_reports_the_predicted_stalls(daemon):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    with daemon.client("monitor-sgd") as c:
        with Monitor(c, model, opt, compute="daemon", every=1, form="sgd", activations=False):
            train(model, opt, 2)
        pts = eventually(lambda: (lambda h: h if len(h) == 2 else None)(
            c.history("2.weight", format="E5M2")["points"]), what="two points")
        assert all(p["stall_rate"] == 1.0 for p in pts)
        ts = {t["name"] for t in c.tensors()["tensors"]}
        assert "1" not in ts and "2.weight.grad" in ts


def _history_rows(c, names, formats):
    """Every stored point of every tensor and format, by (tensor, format, step)."""
    rows = {}
    for name in names:
        for fmt in formats:
            for p in c.history(name, format=fmt)["points"]:
                rows[name, fmt, p["step"]] = p
    return rows


@pytest.mark.parametrize("formats", [None, ["E4M3", "MXFP8_E4M3", "MXFP8_E5M2", "MXFP6_E2M3",
                                              "MXFP4", "NVFP4", "BF16-unscaled"]])
def test_device_and_daemon_store_identical_counts(daemon, formats):
    """One model trained twice from one seed: counted on the device
    (compute="device", with flips) and as snapshots counted by the daemon.
    The daemon stores the same counts, flips, amax and scales for every
    tensor, step and format; only "computed" differs, and the quantization
    error (mse, sqnr_db), which the Monitor computes on the device and sends
    with the counts, equals the daemon's up to the order of its double sums.
    The daemon's default formats, and block-scaled ones beside per-tensor
    ones (MX at scale 1, NVFP4 at its FP32 tensor scale, flips at the
    previous block scales)."""
    run = "twin" if formats is None else "twin-blocks"
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    fmts = formats or ["E0M7", "E1M6", "E3M4", "E5M2", "E7M0"]  # None: the daemon's
    got = {}
    for compute in ("daemon", "device"):
        model = tiny_model()
        opt = torch.optim.Adam(model.parameters(), lr=3e-2)
        with daemon.client(f"{run}-{compute}") as c:
            kw = {"flips": True} if compute == "device" else {}
            if formats is not None:
                kw["formats"] = formats
            with Monitor(c, model, opt, compute=compute, every=2, activations=False,
                         gradients=False, **kw) as mon:
                train(model, opt, 9)
            rep = mon.report()
            assert rep["flushed"] is True and rep["undelivered"] == 0
            got[compute] = eventually(
                lambda: (lambda r: r if len(r) == 4 * len(fmts) * 5 else None)(
                    _history_rows(c, names, fmts)), what="every point of the run")
    assert got["daemon"].keys() == got["device"].keys()
    moved = 0
    for key, a in got["daemon"].items():
        b = got["device"][key]
        assert a["computed"] == "daemon" and b["computed"] == "device", key
        # the quantization error: computed on the device and sent with the counts
        assert a["mse"] is not None and b["mse"] == pytest.approx(a["mse"], rel=1e-12), key
        if a["sqnr_db"] is None:
            assert b["sqnr_db"] is None, key
        else:
            assert b["sqnr_db"] == pytest.approx(a["sqnr_db"], abs=1e-9), key
        differ = ("computed", "mse", "sqnr_db")
        same = {k: v for k, v in a.items() if k not in differ}
        assert same == {k: v for k, v in b.items() if k not in differ}, key
        moved += a["flips"] or 0
    assert moved > 0  # lr 3e-2 moves weights across grid points: flips were compared


def test_device_counts_without_flips_are_stored_as_unknown(daemon):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    with daemon.client("device-noflips") as c:
        with Monitor(c, model, opt, every=1, form="sgd", activations=False,
                     formats=["E5M2"]) as mon:
            train(model, opt, 2)
        assert mon.report()["counted"] == 8
        pts = eventually(lambda: (lambda h: h if len(h) == 2 else None)(
            c.history("2.weight", format="E5M2")["points"]), what="two points")
        assert all(p["stall_rate"] == 1.0 and p["flips"] is None for p in pts)
        assert all(p["computed"] == "device" for p in pts)


def test_sampling_on_the_device_keeps_the_clients_subset(daemon):
    """sample_max taken by the Monitor where the tensors live (compute="daemon",
    the client's option) stores the same counts as the client sampling the
    whole tensor itself (sample_max=0 for the Monitor), and the tensor's
    whole size (ag_snapshot.numel)."""
    formats = ["E5M2", "E3M4"]
    names = ["0.weight", "2.weight"]  # 96 and 48 elements: sampled; the biases are not
    got = {}
    for where, kw in (("device", {}), ("client", {"sample_max": 0})):
        model = tiny_model()
        opt = torch.optim.Adam(model.parameters(), lr=3e-2)
        with daemon.client(f"sampled-{where}", sample_max=40, sample_seed=7) as c:
            with Monitor(c, model, opt, compute="daemon", every=1, activations=False,
                         gradients=False, formats=formats, **kw) as mon:
                train(model, opt, 3)
            assert mon.report()["undelivered"] == 0
            got[where] = eventually(
                lambda: (lambda r: r if len(r) == 2 * 2 * 3 else None)(
                    _history_rows(c, names, formats)), what="every sampled point")
            numel = {t["name"]: t["numel"] for t in c.tensors()["tensors"]}
            assert numel["0.weight"] == 96 and numel["2.weight"] == 48
    for key, a in got["client"].items():
        assert a["total"] == 40, key
        assert a == got["device"][key], key
