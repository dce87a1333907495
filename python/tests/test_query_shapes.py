"""One shape: every query result of altgrad.Client is the document the CLI
prints with --json (the same keys, nesting and values), checked by asking the
same daemon both ways and comparing the parsed JSON for equality.

Reals compare exactly: the CLI prints the shortest text that reads back as the
same double. The one exception is status's uptime_s, a clock read at two
different moments: both must be > 0 and within 60 s of each other."""

import json
import math
import subprocess

import torch

from altgrad import Client, _lib
from altgrad.client import _row
from daemon_fixture import cli_binary, eventually

UPTIME_TOLERANCE_S = 60.0


def cli_json(daemon, *args):
    r = subprocess.run([cli_binary(), "--query", daemon.query, "--json", *args],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def quiet_status(c):
    """Status once the daemon has nothing left to write: two in a row agree."""
    def settled():
        a, b = c.status(), c.status()
        a.pop("uptime_s"), b.pop("uptime_s")
        return a if a == b and a["queue_depth"] == 0 else None
    return eventually(settled, what="the daemon to settle")


def test_every_query_has_the_clis_json_shape(daemon):
    # A run under a taken name (shape-run.2, queried as the client's own run),
    # weights in two formats, statistics, and metadata with quotes.
    with daemon.client("shape-run") as first:
        first.log_amax(0, "seed", "activation", 1.0, 1)
        assert first.start_run(20000) == "shape-run"
    c = daemon.client("shape-run", metadata={"note": "say \"hi\"", "lr": 0.1})
    try:
        gen = torch.Generator().manual_seed(3)
        for step in range(6):
            w = torch.randn(300, generator=gen) * (1 + step)
            c.log_update(step, "fc.weight", w, torch.randn(300, generator=gen) * 1e-3)
            c.log_sgd(step, "fc.bias", torch.ones(7), torch.full((7,), 1e-4), 0.01)
            c.log_stats(step, "fc.out", torch.randn(64, generator=gen), role="activation")
        assert c.start_run(20000) == "shape-run.2"
        c.flush(20000)
        run = c.run
        eventually(lambda: len(c.history("fc.bias")["points"]) == 6, what="six points")
        eventually(lambda: all(t["last_step"] == 5 for t in c.tensors()["tensors"]),
                   what="every tensor at step 5")
        quiet_status(c)

        asked = [
            (c.runs(), ["runs"]),
            (c.tensors(), ["tensors", run]),
            (c.tensors(run="shape-run"), ["tensors", "shape-run"]),
            (c.history("fc.weight"), ["history", run, "fc.weight"]),
            (c.history("fc.weight", format="E3M4", from_step=1, to_step=4, every=2),
             ["history", run, "fc.weight", "--format", "E3M4", "--from", "1", "--to", "4",
              "--every", "2"]),
            (c.scales(), ["scales", run]),
            (c.scales(format="E0M7"), ["scales", run, "--format", "E0M7"]),
            (c.top(), ["top", run]),
            (c.top(format="E1M6", window=3, limit=1),
             ["top", run, "--format", "E1M6", "--window", "3", "--limit", "1"]),
        ]
        for got, args in asked:
            want = cli_json(daemon, *args)
            assert got == want, args
            assert list(got) == list(want), f"{args}: keys in the same order"
        assert asked[1][0]["run"] == "shape-run.2"
        assert asked[3][0]["points"] and asked[7][0]["tensors"], "the documents are not empty"

        got, want = c.status(), cli_json(daemon, "status")
        up_got, up_want = got.pop("uptime_s"), want.pop("uptime_s")
        assert got == want
        assert got["source"] == "daemon" and got["address"] == daemon.query
        assert up_got > 0 and up_want > 0 and abs(up_got - up_want) < UPTIME_TOLERANCE_S
    finally:
        c.close()


def test_items_is_gone_from_every_result(daemon):
    with daemon.client("shape-items") as c:
        c.log_update(0, "w", torch.ones(4), torch.ones(4))
        c.flush()
        eventually(lambda: c.scales()["scales"], what="a scale")
        for doc in (c.runs(), c.tensors(), c.history("w"), c.scales(), c.top(), c.status()):
            assert "items" not in doc


def test_a_real_that_is_not_finite_is_none_as_json_null():
    # the C side can hand a NaN or infinity over; JSON has no such number
    p = _lib.ag_history_point(step=1, stall_rate=math.nan, amax=math.inf, scale=0.5)
    row = _row(p, ("step", "stall_rate", "amax", "scale"))
    assert row == {"step": 1, "stall_rate": None, "amax": None, "scale": 0.5}
    assert json.loads(json.dumps(row)) == row
    s = _lib.ag_scale_info(tensor=b"caf\xc3\xa9", step=2, amax=-math.inf, scale=1.0)
    assert _row(s, ("tensor", "amax")) == {"tensor": "café", "amax": None}
