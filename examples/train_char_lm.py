#!/usr/bin/env python3
"""Train a small character-level transformer LM with altgrad watching.

The text is examples/data/numbers_and_rivers.txt (or --data FILE). With the
Monitor on, every --every steps each parameter's weights and real update
(or gradient, --form sgd) go to a running altgradd, and activation amax via
forward hooks; at the end the daemon's worst tensors per format are printed.
--compare trains twice from the same seed, without and then with the
Monitor, and reports the mean step time of each and their ratio.
It ends with what the client sent, dropped and how many messages the daemon
never confirmed ("undelivered"); with any undelivered it warns on stderr and
exits 3 (1 on other failures, 2 on bad options).

  altgradd --ingest ipc:///tmp/ag/ingest.sock --query ipc:///tmp/ag/query.sock --db /tmp/ag/db &
  PYTHONPATH=python python3 examples/train_char_lm.py --steps 200 --compare \\
      --ingest ipc:///tmp/ag/ingest.sock --query ipc:///tmp/ag/query.sock
  altgrad --query ipc:///tmp/ag/query.sock top <run> --format E5M2
  altgrad --query ipc:///tmp/ag/query.sock history <run> <tensor> --format E5M2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python"))  # run from a checkout

DEFAULT_DATA = os.path.join(HERE, "data", "numbers_and_rivers.txt")


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------
class CharData:
    """Characters of a text file as token ids; random windows for batches."""

    def __init__(self, path: str, context: int, seed: int):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if len(text) < context + 2:
            raise SystemExit(f"{path}: need more than {context + 1} characters of text")
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        ids = torch.tensor([self.stoi[c] for c in text], dtype=torch.long)
        cut = max(int(len(ids) * 0.9), context + 2)
        self.train, self.val = ids[:cut], ids[cut - context - 1:]
        self.context = context
        self.gen = torch.Generator().manual_seed(seed)

    @property
    def vocab(self) -> int:
        return len(self.chars)

    def batch(self, size: int, split: str = "train"):
        data = self.train if split == "train" else self.val
        starts = torch.randint(0, len(data) - self.context - 1, (size,), generator=self.gen)
        x = torch.stack([data[s:s + self.context] for s in starts])
        y = torch.stack([data[s + 1:s + 1 + self.context] for s in starts])
        return x, y


# ---------------------------------------------------------------------------
# Model: pre-norm decoder-only transformer
# ---------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, context: int):
        super().__init__()
        if d_model % heads:
            raise SystemExit("--d-model must be a multiple of --heads")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        mask = torch.tril(torch.ones(context, context, dtype=torch.bool))
        self.register_buffer("mask", mask.view(1, 1, context, context), persistent=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / math.sqrt(c // self.heads)
        att = att.masked_fill(~self.mask[:, :, :t, :t], float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(b, t, c)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, d_model: int, heads: int, context: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, heads, context)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class CharLM(nn.Module):
    def __init__(self, vocab: int, d_model: int, layers: int, heads: int, context: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, heads, context) for _ in range(layers))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, idx):
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def make_optimizer(name: str, model: nn.Module, lr: float):
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    return torch.optim.Adam(model.parameters(), lr=lr)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def shm_bytes(args, client_cls) -> int:
    """The client's shm_bytes for --shm-mib (0: the library default)."""
    if args.shm_mib == 0:
        return client_cls.SHM_OFF
    if args.shm_mib > 0:
        return args.shm_mib << 20
    if args.compute != "daemon":
        return 0  # counts travel, not tensors
    data = CharData(args.data, args.context, args.seed)
    try:  # shapes only, no memory (torch >= 2.0)
        with torch.device("meta"):
            model = CharLM(data.vocab, args.d_model, args.layers, args.heads, args.context)
    except (TypeError, AttributeError):
        model = CharLM(data.vocab, args.d_model, args.layers, args.heads, args.context)
    mib = math.ceil(8 * sum(p.numel() for p in model.parameters()) * 1.1 / 2**20)
    return min(2048, max(64, mib)) << 20


def train(args, device, monitor_on: bool, client=None):
    """One training run; returns its measurements (and the Monitor report)."""
    torch.manual_seed(args.seed)
    data = CharData(args.data, args.context, args.seed)
    model = CharLM(data.vocab, args.d_model, args.layers, args.heads, args.context).to(device)
    opt = make_optimizer(args.optimizer, model, args.lr)
    monitor = None
    if monitor_on:
        from altgrad.torch import Monitor
        monitor = Monitor(client, model, opt, every=args.every, form=args.form,
                          compute=args.compute, flips=args.flips and args.compute == "device")
    times, losses = [], []
    model.train()
    for step in range(args.steps):
        x, y = data.batch(args.batch)
        x, y = x.to(device), y.to(device)
        sync(device)
        t0 = time.perf_counter()
        logits = model(x)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
        if args.log_every and (step % args.log_every == 0 or step == args.steps - 1):
            print(f"  step {step:5d}  loss {losses[-1]:.4f}  {1000 * times[-1]:.1f} ms",
                  flush=True)
    report = monitor.close() if monitor is not None else None
    model.eval()
    with torch.no_grad():
        xv, yv = data.batch(args.batch, "val")
        lv = model(xv.to(device))
        val_loss = F.cross_entropy(lv.view(-1, lv.shape[-1]), yv.to(device).view(-1)).item()
    first = args.warmup if len(times) > args.warmup else 0
    measured = times[first:]
    # steps the Monitor samples (step % every == 0) carry its snapshot cost;
    # the others only its hooks' bookkeeping
    sampled = [t for i, t in enumerate(times) if i >= first and i % args.every == 0]
    unsampled = [t for i, t in enumerate(times) if i >= first and i % args.every != 0]
    mean = lambda xs: 1000 * sum(xs) / len(xs) if xs else 0.0  # noqa: E731
    return {
        "monitor": monitor_on,
        "steps": args.steps,
        "step_ms_mean": 1000 * sum(measured) / len(measured),
        "step_ms_median": 1000 * sorted(measured)[len(measured) // 2],
        "step_ms_mean_sampled": mean(sampled),
        "step_ms_mean_unsampled": mean(unsampled),
        "first_loss": losses[0],
        "final_loss": losses[-1],
        "val_loss": val_loss,
        "parameters": sum(p.numel() for p in model.parameters()),
        "monitor_report": report,
    }


def summarize(client, run: str, formats, window: int, limit: int) -> dict:
    """The daemon's view of this run: worst tensors per format, and the stall
    history of the worst E5M2 tensor."""
    out = {"run": run, "top": {}, "history": None}
    for fmt in formats:
        out["top"][fmt] = client.top(run=run, format=fmt, window=window, limit=limit)
    worst = out["top"].get("E5M2", {}).get("tensors") or []
    if worst:
        out["history"] = client.history(worst[0]["tensor"], run=run, format="E5M2")
    return out


def print_summary(s: dict) -> None:
    for fmt, top in s["top"].items():
        print(f"\nworst tensors in {fmt} (steps {top['from_step']}..{top['to_step']}):")
        for e in top["tensors"]:
            print(f"  {e['tensor']:32s} stall {e['stall_rate']:6.3f}  "
                  f"({e['stalled']}/{e['total']} over {e['steps']} snapshots)")
    h = s["history"]
    if h and h["points"]:
        print(f"\nE5M2 stall history of {h['tensor']}:")
        for p in h["points"]:
            print(f"  step {p['step']:5d}  stall {p['stall_rate']:.3f}  amax {p['amax']:.4g}"
                  f"  scale {p['scale']:.3g}  flips {p['flips']}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adam")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--seed", type=int, default=0)
    mon = p.add_mutually_exclusive_group()
    mon.add_argument("--monitor", dest="monitor", action="store_true", default=True,
                     help="stream to altgradd (default)")
    mon.add_argument("--no-monitor", dest="monitor", action="store_false")
    p.add_argument("--compare", action="store_true",
                   help="train without, then with, the Monitor and compare step times")
    p.add_argument("--every", type=int, default=10, help="snapshot every k steps")
    p.add_argument("--form", choices=["update", "sgd"], default="update")
    p.add_argument("--compute", choices=["device", "daemon"], default="device",
                   help="count stalls on the model's device and send counts (default), or "
                        "send snapshots for the daemon to count")
    p.add_argument("--policy", choices=["drop", "block"], default="drop",
                   help="the client's full-queue policy: drop (counted) or block (lossless; "
                        "the Monitor's sender thread waits, not the training step)")
    p.add_argument("--flips", action="store_true",
                   help="with --compute device: count pattern flips too (one byte per "
                        "parameter per format on the device)")
    p.add_argument("--ingest", default=None, help="daemon ingest URL")
    p.add_argument("--query", default=None, help="daemon query URL")
    p.add_argument("--run", default=None,
                   help="run name (default: generated); a name another launch has already "
                        "used becomes NAME.2, NAME.3 ... (printed at the start)")
    p.add_argument("--resume", action="store_true",
                   help="continue the newest run of that name instead of starting a new one")
    p.add_argument("--sample-max", type=int, default=0,
                   help="snapshots of larger tensors send a fixed subset of this many "
                        "elements (client option sample_max; 0: whole tensors)")
    p.add_argument("--shm-mib", type=int, default=-1,
                   help="the client's shared-memory segment for snapshots to a daemon on "
                        "this machine, MiB: -1 (default) room for one whole sampled step "
                        "with --compute daemon (8 bytes a parameter, 64..2048 MiB), else "
                        "the library's 64 MiB; 0 none (docs/client.md, Shared memory)")
    p.add_argument("--formats", default="E5M2,E3M4,E1M6,E0M7,E7M0",
                   help="formats to summarize at the end")
    p.add_argument("--top", type=int, default=5, help="tensors per format in the summary")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--json", default=None, help="write the results to this file")
    args = p.parse_args(argv)
    if args.steps < 1:
        p.error("--steps must be >= 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    result = {"device": str(device), "torch": torch.__version__, "args": vars(args)}
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
    runs, undelivered = [], 0
    if args.compare or not args.monitor:
        print(f"training without the monitor on {device} ...", flush=True)
        runs.append(train(args, device, False))
    client = None
    if args.monitor:
        from altgrad import AltgradError, Client
        client = Client(ingest_url=args.ingest, query_url=args.query, run=args.run,
                        resume=args.resume, sample_max=args.sample_max, policy=args.policy,
                        shm_bytes=shm_bytes(args, Client),
                        metadata={"example": "train_char_lm", "device": str(device),
                                  "d_model": args.d_model, "layers": args.layers,
                                  "optimizer": args.optimizer, "lr": args.lr})
        try:  # the name the daemon files the run under (NAME.2 ... if NAME was taken)
            name, note = client.start_run(timeout_ms=5000), ""
        except AltgradError as e:  # no daemon yet: training goes on regardless
            name, note = client.run, f" (not confirmed by the daemon: {e})"
        print(f"training with the monitor on {device}, run {name}{note} ...", flush=True)
        runs.append(train(args, device, True, client))
        client.end_run()
        try:  # until the daemon confirms it stored the whole run
            client.flush(10000)
        except AltgradError as e:
            print(f"altgrad: the daemon did not confirm every message: {e}", file=sys.stderr)
    result["runs"] = runs
    for r in runs:
        tag = "with monitor   " if r["monitor"] else "without monitor"
        print(f"{tag}: {r['step_ms_mean']:.2f} ms/step mean ({r['step_ms_median']:.2f} median; "
              f"steps k*{args.every}: {r['step_ms_mean_sampled']:.2f}, others: "
              f"{r['step_ms_mean_unsampled']:.2f}), loss {r['first_loss']:.3f} -> "
              f"{r['final_loss']:.3f}, val {r['val_loss']:.3f}")
    if len(runs) == 2:
        result["overhead_ratio"] = runs[1]["step_ms_mean"] / runs[0]["step_ms_mean"]
        print(f"step time ratio with/without monitor: {result['overhead_ratio']:.3f}")
    if client is not None:
        from altgrad.torch import format_report
        print(format_report(runs[-1]["monitor_report"]))
        result["run"] = client.run
        formats = [f for f in args.formats.split(",") if f]
        from altgrad import NotFoundError
        summary, last_sampled = None, (args.steps - 1) // args.every * args.every
        deadline = time.monotonic() + 30
        while True:  # the daemon commits asynchronously: wait for the last sampled step
            try:
                summary = summarize(client, client.run, formats, 0, args.top)
                if summary["top"][formats[0]]["to_step"] >= last_sampled:
                    break
            except NotFoundError:
                pass
            except AltgradError as e:  # no daemon to ask: nothing to summarize
                print(f"altgrad: no summary: {e}", file=sys.stderr)
                break
            if time.monotonic() > deadline:
                print("the daemon did not show the run's last step within 30 s",
                      file=sys.stderr)
                break
            time.sleep(0.1)
        result["summary"] = summary
        if summary is not None:
            print_summary(summary)
        st = client.stats()
        undelivered = client.close()
        result["client"] = dict(st, undelivered=undelivered)
        print(f"altgrad: sent {st['sent']} messages ({st['snapshots']} snapshots, "
              f"{st['records']} statistics records), dropped {st['dropped']}, "
              f"undelivered {undelivered}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=str)
    if undelivered:
        print(f"altgrad: {undelivered} messages were never confirmed by the daemon: its record "
              f"of run {result['run']} is incomplete", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
