"""Client.log_counts against a real daemon: counts computed by the trainer
(lists, nested lists and buffers of every accepted kind) come back from
history exactly, computed "device", unknown flips as None; bad batches raise;
status tells the daemon's scale rule."""

from __future__ import annotations

import array

import numpy as np
import pytest
import torch

from altgrad import AltgradError

TENSORS = ["l1.weight", "l2.weight"]
FORMATS = ["E5M2", "E3M4"]


def expected(step):
    """Flat counts [T][F][5], scales [T*F], amax, numel, nonfinite, flips for a step."""
    counts, scales, flips = [], [], []
    for t in range(len(TENSORS)):
        for f in range(len(FORMATS)):
            total = 50 + 10 * step + t
            counts += [total // (2 + f), total, step + f, t, 0]
            scales.append((step + f) / 64.0)
            flips.append(-1 if t == 1 else step + f)
    amax = [0.5 * step, 2.0 * step]
    numel = [1000, 2000]
    nonfinite = [0, step]
    return counts, scales, amax, numel, nonfinite, flips


def check_history(c, run, steps):
    for t, name in enumerate(TENSORS):
        for f, fmt in enumerate(FORMATS):
            h = c.history(name, run=run, format=fmt)
            assert [p["step"] for p in h["points"]] == steps
            for p in h["points"]:
                counts, scales, amax, _, _, flips = expected(p["step"])
                r = t * len(FORMATS) + f
                assert [p[k] for k in ("stalled", "total", "overflow", "underflow",
                                       "nonfinite")] == counts[r * 5:r * 5 + 5]
                assert p["scale"] == scales[r]
                assert p["amax"] == amax[t]
                assert p["flips"] == (None if flips[r] < 0 else flips[r])
                assert p["computed"] == "device"


def test_log_counts_takes_lists_and_nested_lists(daemon):
    with daemon.client("counts-lists", policy="block") as c:
        for step in (1, 2):
            counts, scales, amax, numel, nonfinite, flips = expected(step)
            if step == 2:  # nested [T][F][5]
                counts = [[counts[(t * 2 + f) * 5:(t * 2 + f) * 5 + 5] for f in range(2)]
                          for t in range(2)]
            assert c.log_counts(step, TENSORS, FORMATS, counts, scales, amax, numel, nonfinite,
                                flips=flips)
        c.flush(20000)
        check_history(c, "counts-lists", [1, 2])
        tensors = {t["name"]: t for t in c.tensors("counts-lists")["tensors"]}
        assert tensors["l2.weight"]["numel"] == 2000
        assert tensors["l2.weight"]["snapshots"] == 2


@pytest.mark.parametrize("kind", ["array", "memoryview", "numpy", "torch", "torch.numpy"])
def test_log_counts_takes_buffers(daemon, kind):
    run = f"counts-{kind}"

    def buf(values, code):
        a = array.array(code, values)
        np_dtype = {"Q": np.uint64, "q": np.int64, "d": np.float64, "f": np.float32}[code]
        if kind == "array":
            return a
        if kind == "memoryview":
            return memoryview(a)
        if kind == "numpy":
            return np.array(values, dtype=np_dtype)
        t = torch.tensor(np.array(values, dtype=np.int64 if code in "Qq" else np_dtype))
        return t if kind == "torch" else t.numpy()

    with daemon.client(run, policy="block") as c:
        counts, scales, amax, numel, nonfinite, flips = expected(3)
        assert c.log_counts(3, TENSORS, FORMATS, buf(counts, "Q"), buf(scales, "f"),
                            buf(amax, "d"), buf(numel, "Q"), buf(nonfinite, "Q"),
                            flips=buf(flips, "q"), form="update")
        c.flush(20000)
        check_history(c, run, [3])


def test_log_counts_converts_buffers_of_other_types(daemon):
    counts, scales, amax, numel, nonfinite, flips = expected(4)
    with daemon.client("counts-convert", policy="block") as c:
        # int32 counts, float64 scales (exact as float32), float32 amax
        assert c.log_counts(4, TENSORS, FORMATS, np.array(counts, dtype=np.int32),
                            np.array(scales, dtype=np.float64),
                            np.array(amax, dtype=np.float32), array.array("i", numel),
                            nonfinite, flips=np.array(flips, dtype=np.int32).reshape(2, 2))
        c.flush(20000)
        check_history(c, "counts-convert", [4])


def test_flips_none_means_unknown_everywhere(daemon):
    counts, scales, amax, numel, nonfinite, _ = expected(1)
    with daemon.client("counts-noflips", policy="block") as c:
        assert c.log_counts(1, TENSORS, FORMATS, counts, scales, amax, numel, nonfinite,
                            form="sgd")
        c.flush(20000)
        for name in TENSORS:
            h = c.history(name, run="counts-noflips", format="E5M2")
            assert h["points"][0]["flips"] is None
            assert h["points"][0]["computed"] == "device"


def test_bad_batches_raise_and_queue_nothing(daemon):
    counts, scales, amax, numel, nonfinite, flips = expected(1)
    with daemon.client("counts-bad", policy="block") as c:
        with pytest.raises(ValueError):
            c.log_counts(1, TENSORS, FORMATS, counts[:-1], scales, amax, numel, nonfinite)
        with pytest.raises(ValueError):
            c.log_counts(1, TENSORS, FORMATS, counts, scales, amax, numel, nonfinite,
                         form="adam")
        with pytest.raises(TypeError):
            c.log_counts(1, TENSORS, FORMATS, counts, scales, amax, numel, object())
        bad = list(counts)
        bad[0] = bad[1] + 1  # stalled > total
        with pytest.raises(AltgradError, match="stalled exceeds total"):
            c.log_counts(1, TENSORS, FORMATS, bad, scales, amax, numel, nonfinite)
        with pytest.raises(AltgradError):
            c.log_counts(1, TENSORS, ["E5M2", "NOPE9"], counts, scales, amax, numel, nonfinite)
        # hostile quantization error: each refused whole
        for mse, sqnr, what in (([0.5, -1e-9, 0, 0], None, "mse is not finite"),
                                ([0.5, float("inf"), 0, 0], None, "mse is not finite"),
                                ([0.5, 1, 1, 1], [1, 2, float("nan"), float("inf")],
                                 "sqnr_db is not finite"),
                                ([0, 1, 1, 1], [3, None, None, None], "without an mse"),
                                (None, [3, 4, 5, 6], "without an mse")):
            with pytest.raises(ValueError, match=what):
                c.log_counts(1, TENSORS, FORMATS, counts, scales, amax, numel, nonfinite,
                             mse=mse, sqnr_db=sqnr)
        with pytest.raises(ValueError, match="4 values expected"):
            c.log_counts(1, TENSORS, FORMATS, counts, scales, amax, numel, nonfinite,
                         mse=[0.5, 1, 1])
        assert c.stats()["queued"] + c.stats()["sent"] == 0


def test_log_counts_carries_the_quantization_error(daemon):
    counts, scales, amax, numel, nonfinite, flips = expected(1)
    mse = [0.25, None, 1e-12, 0.0]
    sqnr = [12.5, None, float("nan"), None]
    with daemon.client("counts-qerr", policy="block") as c:
        assert c.log_counts(1, TENSORS, FORMATS, counts, scales, amax, numel, nonfinite,
                            mse=mse, sqnr_db=sqnr)
        assert c.log_counts(2, TENSORS, FORMATS, counts, scales, amax, numel, nonfinite)
        c.flush(20000)
        for t, name in enumerate(TENSORS):
            for f, fmt in enumerate(FORMATS):
                p1, p2 = c.history(name, run="counts-qerr", format=fmt)["points"]
                r = t * 2 + f
                assert p1["mse"] == mse[r]
                want = sqnr[r] if sqnr[r] == sqnr[r] else None
                assert p1["sqnr_db"] == want
                assert p2["mse"] is None and p2["sqnr_db"] is None  # not sent: unknown


def test_status_tells_the_daemons_scale_rule(daemon):
    with daemon.client("counts-status") as c:
        st = c.status()
    assert st["history_len"] == 16
    assert st["amax_mode"] == "max"
    assert st["scale_mode"] == "current"
    assert st["margin"] == 0.0
    assert st["scale_min"] == 1e-10
