"""The Monitor under torch.distributed on real ranks: FSDP2 (fully_shard) or
DDP, checked against the whole tensors and timed.

  torchrun --nproc-per-node 2 bench/gpu_ranks.py --mode fsdp2|ddp --out F.json
      [--altgradd build/daemon/altgradd] [--device cuda|cpu] [--steps 60]
      [--every 10] [--compute device|daemon] [--size small|85m]

Every rank trains examples/train_char_lm.py's transformer twice from one seed:
first without the Monitor (the baseline), then with it, logging to an altgradd
that rank 0 starts (temporary ipc sockets and database; the binary is
--altgradd, else $AG_BUILD_DIR/daemon/altgradd, else build/daemon/altgradd).
In the second run, at every logged step, the whole tensors are gathered
(`full_tensor()` for FSDP2's DTensors; DDP's are whole on every rank) before
and after the optimizer step, and rank 0 counts them with
altgrad.torch.stall_counts at the scale of the whole tensors' amax history
(the daemon's rule, from its status). After the run, rank 0 compares every
(tensor, format, step) the daemon stored with those counts, and checks how
many ranks reported each point (FSDP2: every rank; DDP: rank 0 alone, the
tensors being replicated).

Step times exclude the gathering: a step is timed as forward + backward and
the optimizer step (the Monitor's work), each closed by a device
synchronization, in both runs alike. The JSON has the step-time ratio
with/without the Monitor, the Monitor's report (rank 0), what was compared and
the first mismatches. The exit status is 1 on any mismatch or missing point,
2 on a setup error. --device cpu runs with gloo (DDP only where PyTorch lacks
FSDP2, as Debian's 1.13 does).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "python"))
sys.path.insert(0, os.path.join(ROOT, "examples"))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SIZES = {
    "tiny": dict(d_model=32, layers=1, heads=2, context=16, batch=4),
    "small": dict(d_model=128, layers=4, heads=4, context=64, batch=32),
    "85m": dict(d_model=768, layers=12, heads=12, context=256, batch=16),
}
FORMATS = ["E0M7", "E1M6", "E3M4", "E5M2", "E7M0"]
KEYS = ("stalled", "total", "overflow", "underflow")


def say(msg):
    if dist.get_rank() == 0:
        print(msg, flush=True)


def fully_shard_fn():
    """FSDP2's fully_shard, or None (old PyTorch; Debian's 1.13 even fails
    importing torch.distributed.fsdp on Python 3.11 with a ValueError)."""
    try:
        from torch.distributed.fsdp import fully_shard  # PyTorch 2.6+
        return fully_shard
    except Exception:
        pass
    try:
        from torch.distributed._composable.fsdp import fully_shard  # 2.4, 2.5
        return fully_shard
    except Exception:
        return None


def build(args, device, data_vocab):
    """The model, wrapped for the mode, and its optimizer."""
    from train_char_lm import CharLM
    sz = SIZES[args.size]
    torch.manual_seed(args.seed)
    model = CharLM(data_vocab, sz["d_model"], sz["layers"], sz["heads"], sz["context"])
    model = model.to(device)
    if args.mode == "fsdp2":
        shard = fully_shard_fn()
        for blk in model.blocks:
            shard(blk)
        shard(model)
        wrapped = model
    else:
        # the only buffers are the constant causal masks (bool: gloo cannot
        # broadcast them, and every rank made the same)
        ddp = torch.nn.parallel.DistributedDataParallel
        ddp._set_params_and_buffers_to_ignore_for_model(
            model, [n for n, b in model.named_buffers() if b.dtype == torch.bool])
        wrapped = ddp(model, device_ids=[device.index] if device.type == "cuda" else None,
                      broadcast_buffers=False)
    opt = torch.optim.Adam(wrapped.parameters(), lr=args.lr)
    return wrapped, opt


def whole(p):
    """The whole tensor of a parameter (a collective for a DTensor: every
    rank calls it)."""
    t = p.detach()
    if hasattr(t, "full_tensor"):
        return t.full_tensor()
    return t


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Expected:
    """Rank 0's counts of the whole tensors at the daemon's scales: an amax
    history per tensor as the daemon keeps it (pushed at logged steps)."""

    def __init__(self, status):
        from altgrad.torch import ScaleRule
        self.rule = ScaleRule.from_status(status or {})
        self.hist = {}
        self.rows = {}
        self.amax = {}  # (tensor, step): the whole tensor's amax (the history's input)

    def push(self, name, amax):
        """One observation per tensor and logged step (the daemon's
        ag_eng_observe); returns the amax the scales come from."""
        h = self.hist.setdefault(name, [])
        before = list(h)
        h.append(amax)
        del h[:-self.rule.history_len]
        use = before if self.rule.scale_mode == "delayed" else h
        if not use:
            return 1.0
        return use[-1] if self.rule.amax_mode == "most_recent" else max(use)

    def scale(self, ha, fmt_max):
        from altgrad._device import check_scale
        s = max(ha / fmt_max, self.rule.scale_min) * self.rule.multiplier
        return check_scale(s)

    def add(self, step, name, w, u):
        from altgrad._device import format_params
        from altgrad.torch import stall_counts
        fin = torch.isfinite(w)
        amax = float(torch.where(fin, w.abs(), torch.zeros_like(w)).max())
        ha = self.push(name, amax)
        scales = {f: self.scale(ha, format_params(f).max_finite) for f in FORMATS}
        got = stall_counts(w, u, FORMATS, scales)
        for f in FORMATS:
            self.rows[(name, step, f)] = {k: got[f][k] for k in KEYS}
            self.rows[(name, step, f)]["scale"] = scales[f]
        self.amax[(name, step)] = amax


def forward_backward(args, device, data, wrapped, opt):
    """One batch on the device, then forward, loss and backward, timed from
    after the batch's copy (the device synchronized first); returns the
    start time."""
    x, y = data.batch(SIZES[args.size]["batch"])
    x, y = x.to(device), y.to(device)
    sync(device)
    t0 = time.perf_counter()
    logits = wrapped(x)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
    opt.zero_grad(set_to_none=True)
    loss.backward()
    return t0


def train(args, device, data, monitor_on, urls=None, launch=None, status=None, check=True,
          run=None):
    """One run; returns (step times after warmup, Monitor report, Expected).
    check False: no gathering and no Expected (a run only timed); run: the
    run name (default ranks-MODE)."""
    wrapped, opt = build(args, device, data.vocab)
    mon = client = expected = None
    rank = dist.get_rank()
    if monitor_on:
        from altgrad import Client
        from altgrad.torch import Monitor
        client = Client(ingest_url=urls[0], query_url=urls[1], run=run or f"ranks-{args.mode}",
                        launch_id=launch, rank=rank, world_size=dist.get_world_size(),
                        policy="block")
        mon = Monitor(client, wrapped, opt, every=args.every, compute=args.compute,
                      formats=FORMATS, **args.monitor_kw)
        expected = Expected(status) if rank == 0 and check else None
    gen = torch.Generator().manual_seed(args.seed + rank)  # each rank its own batches
    data.gen = gen
    times = []
    wrapped.train()
    for step in range(args.steps):
        t0 = forward_backward(args, device, data, wrapped, opt)
        sync(device)
        t1 = time.perf_counter()
        logged = monitor_on and check and step % args.every == 0
        before = {}
        if logged:  # not timed: the check's own gathering
            with torch.no_grad():
                for n, p in wrapped.named_parameters():
                    w = whole(p)
                    if rank == 0:
                        before[n] = w.clone()
            sync(device)
        t2 = time.perf_counter()
        opt.step()
        sync(device)
        t3 = time.perf_counter()
        if logged:
            with torch.no_grad():
                for n, p in wrapped.named_parameters():
                    w = whole(p)
                    if rank == 0:
                        expected.add(step, n, before[n], w - before[n])
            before.clear()
        if step >= args.warmup:
            times.append((t1 - t0) + (t3 - t2))
    rep = None
    if mon is not None:
        rep = mon.close(flush_timeout_ms=60000)
        client.close()
    return times, rep, expected


def interleaved(args, device, data, urls, launch):
    """Step times of two copies of the model trained side by side in one
    process, one with the Monitor and one without, alternating blocks of
    `every` steps (ABBA order) so that a drift of the host's or the GPUs'
    speed weighs on both alike. Each monitored block starts at a sampled step
    and holds what follows it (the sender thread's work), so the block pair
    is one logging period with and without the Monitor. Returns (times
    without, times with, block ratios, Monitor report)."""
    from altgrad import Client
    from altgrad.torch import Monitor
    rank = dist.get_rank()
    models = {}
    for on in (False, True):
        models[on] = build(args, device, data.vocab)
    client = Client(ingest_url=urls[0], query_url=urls[1], run=f"ranks-{args.mode}-interleaved",
                    launch_id=launch, rank=rank, world_size=dist.get_world_size(),
                    policy="block")
    mon = Monitor(client, models[True][0], models[True][1], every=args.every,
                  compute=args.compute, formats=FORMATS, **args.monitor_kw)
    gens = {on: torch.Generator().manual_seed(args.seed + rank) for on in (False, True)}
    times = {False: [], True: []}
    block_ratios = []
    for b in range(args.interleave):
        order = (True, False) if b % 2 == 0 else (False, True)
        got = {}
        for on in order:
            wrapped, opt = models[on]
            data.gen = gens[on]
            wrapped.train()
            ts = []
            for _ in range(args.every):
                t0 = forward_backward(args, device, data, wrapped, opt)
                opt.step()
                sync(device)
                ts.append(time.perf_counter() - t0)
            got[on] = ts
        if b >= args.interleave_warmup:
            times[False] += got[False]
            times[True] += got[True]
            block_ratios.append(sum(got[True]) / sum(got[False]))
    rep = mon.close(flush_timeout_ms=60000)
    client.close()
    return times[False], times[True], block_ratios, rep


def summary(without, with_, ratios, rep):
    """The interleaved times as the JSON reports them: the pooled ratio, the
    median of the block ratios and a 95% interval of the mean block ratio."""
    n = len(ratios)
    mean = sum(ratios) / n
    sd = (sum((r - mean) ** 2 for r in ratios) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"blocks": n, "steps_each": len(without),
            "step_ms_without": 1000.0 * sum(without) / len(without),
            "step_ms_with": 1000.0 * sum(with_) / len(with_),
            "ratio": sum(with_) / sum(without),
            "median_block_ratio": sorted(ratios)[n // 2],
            "mean_block_ratio": mean, "ci95_mean_block_ratio": 1.96 * sd / n ** 0.5,
            "block_ratios": ratios, "monitor_report": rep}


def say_interleaved(inter, every):
    print(f"interleaved ({inter['blocks']} blocks of {every} steps each way): "
          f"ratio {inter['ratio']:.4f} ({inter['step_ms_with']:.2f} vs "
          f"{inter['step_ms_without']:.2f} ms), median block ratio "
          f"{inter['median_block_ratio']:.4f}, mean {inter['mean_block_ratio']:.4f} "
          f"+- {inter['ci95_mean_block_ratio']:.4f}", flush=True)


def start_daemon(binary, tmp):
    ingest, query = f"ipc://{tmp}/ingest.sock", f"ipc://{tmp}/query.sock"
    log = open(os.path.join(tmp, "daemon.log"), "w")
    proc = subprocess.Popen([binary, "--ingest", ingest, "--query", query, "--db",
                             os.path.join(tmp, "a.db"), "--http", "off"],
                            stdout=log, stderr=subprocess.STDOUT)
    from altgrad import Client
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(tmp, "query.sock")) and time.monotonic() < deadline:
        time.sleep(0.05)  # (a client opened before it would say there is no daemon)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"altgradd exited with {proc.returncode}")
        try:
            with Client(ingest_url=ingest, query_url=query, run="probe") as c:
                return proc, (ingest, query), c.status()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def compare(args, urls, expected, world, replicated):
    """Every expected (tensor, step, format) against the daemon's history:
    the counts, the scale and how many ranks reported (`ranks`: every rank
    for a shard, 1 for a replicated tensor)."""
    from altgrad import Client
    run = f"ranks-{args.mode}"
    first, compared, missing, mismatched, ranks_seen = [], 0, 0, 0, {}
    names = sorted({k[0] for k in expected.rows})
    steps = sorted({k[1] for k in expected.rows})
    with Client(ingest_url=urls[0], query_url=urls[1], run="checker") as c:
        def fetch():
            return {(name, f): {p["step"]: p for p in
                                c.history(name, run=run, format=f)["points"]}
                    for name in names for f in FORMATS}

        # the daemon confirmed every message; a step's last shard may still be
        # on its way to the database: wait a little for points still missing
        deadline = time.monotonic() + 30
        got = fetch()
        while (time.monotonic() < deadline
               and sum(len(v) for v in got.values()) < len(expected.rows)):
            time.sleep(0.5)
            got = fetch()
        for name in names:
            for f in FORMATS:
                pts = got[(name, f)]
                for step in steps:
                    e = expected.rows[(name, step, f)]
                    p = pts.get(step)
                    if p is None:
                        missing += 1
                        bad = {"missing": True}
                    else:
                        compared += 1
                        want_ranks = 1 if name in replicated else world
                        got_ranks = p.get("ranks")
                        ranks_seen[str(got_ranks)] = ranks_seen.get(str(got_ranks), 0) + 1
                        bad = {k: [p[k], e[k]] for k in KEYS if p[k] != e[k]}
                        if p.get("scale") != e["scale"]:
                            bad["scale"] = [p.get("scale"), e["scale"]]
                        if got_ranks != want_ranks:
                            bad["ranks"] = [got_ranks, want_ranks]
                        mismatched += bool(bad)
                    if bad and len(first) < 20:
                        # the amax the scale came from, step by step: what the
                        # daemon stored (the Monitor's) against the gathered tensor's
                        trail = [[s, pts[s].get("amax") if s in pts else None,
                                  expected.amax.get((name, s))] for s in steps if s <= step]
                        first.append({"tensor": name, "step": step, "format": f,
                                      "got_vs_expected": bad, "amax_got_vs_expected": trail})
    return {"run": run, "tensors": len(names), "steps": steps, "formats": FORMATS,
            "points_compared": compared, "points_missing": missing,
            "points_mismatched": mismatched, "ranks_seen": ranks_seen,
            "first_mismatches": first, "match": missing == 0 and mismatched == 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=("fsdp2", "ddp"), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--altgradd", default=None)
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--compute", choices=("device", "daemon"), default="device")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pairs", type=int, default=1,
                    help="runs without and with the Monitor, alternated (ABBA...): the "
                         "first pair is checked, the others only timed")
    ap.add_argument("--interleave", type=int, default=0,
                    help="then BLOCKS blocks of --every steps of two copies of the model, "
                         "with and without the Monitor, alternated in one process (timed only)")
    ap.add_argument("--interleave-warmup", type=int, default=4,
                    help="leading interleaved blocks left out of the times")
    ap.add_argument("--monitor-kw", type=json.loads, default={},
                    help="further Monitor keyword arguments, as a JSON object (for an "
                         "ablation: '{\"activations\": false}')")
    ap.add_argument("--interleave-only", action="store_true",
                    help="only the interleaved timing: no checked run, no pairs")
    args = ap.parse_args()
    if args.interleave_only and not args.interleave:
        raise SystemExit("--interleave-only needs --interleave")
    if args.interleave and args.interleave <= args.interleave_warmup:
        raise SystemExit("--interleave must be above --interleave-warmup")
    if args.warmup >= args.steps:
        raise SystemExit("--warmup must be below --steps")
    dev_kind = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev_kind == "cuda":
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    dist.init_process_group("nccl" if dev_kind == "cuda" else "gloo",
                            timeout=datetime.timedelta(seconds=300))
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.mode == "fsdp2" and fully_shard_fn() is None:
        say(f"PyTorch {torch.__version__} has no fully_shard (FSDP2)")
        dist.destroy_process_group()
        sys.exit(2)
    from train_char_lm import DEFAULT_DATA, CharData
    sz = SIZES[args.size]
    daemon = tmp = None
    box = [None]
    if rank == 0:
        binary = args.altgradd or os.path.join(
            os.environ.get("AG_BUILD_DIR", os.path.join(ROOT, "build")), "daemon", "altgradd")
        if not os.access(binary, os.X_OK):
            print(f"altgradd not found at {binary}", flush=True)
        else:
            tmp = tempfile.mkdtemp(prefix="agranks-")
            daemon, urls, status = start_daemon(binary, tmp)
            box = [(urls, uuid.uuid4().hex, status)]
    dist.broadcast_object_list(box, src=0)
    if box[0] is None:
        dist.destroy_process_group()
        sys.exit(2)
    urls, launch, status = box[0]
    rc = 0
    try:
        data = CharData(DEFAULT_DATA, sz["context"], args.seed)
        say(f"{args.mode} on {world} ranks ({device.type}, torch {torch.__version__}), "
            f"{args.size} model, {args.steps} steps, every {args.every}, {args.compute}")
        if args.interleave_only:
            ib, im, iratios, irep = interleaved(args, device, data, urls, launch)
            dist.barrier()
            if rank == 0:
                inter = summary(ib, im, iratios, irep)
                inter.update(mode=args.mode, size=args.size, every=args.every,
                             monitor_kw=args.monitor_kw, torch=torch.__version__)
                with open(args.out, "w") as f:
                    json.dump(inter, f, indent=1, default=str)
                say_interleaved(inter, args.every)
            return
        base, _, _ = train(args, device, data, False)
        dist.barrier()
        mon_t, rep, expected = train(args, device, data, True, urls, launch, status)
        dist.barrier()
        # further pairs, timed only, in the order with/without then without/with
        # (ABBA), so a drift of the host's speed weighs on both alike
        pair_ratios = [sum(mon_t) / sum(base)]
        all_base, all_mon = list(base), list(mon_t)
        for k in range(1, max(1, args.pairs)):
            order = (True, False) if k % 2 else (False, True)
            got = {}
            for on in order:
                got[on], _, _ = train(args, device, data, on, urls, launch, status,
                                      check=False, run=f"ranks-{args.mode}-timing{k}")
                dist.barrier()
            pair_ratios.append(sum(got[True]) / sum(got[False]))
            all_base += got[False]
            all_mon += got[True]
        inter = None
        if args.interleave:
            ib, im, iratios, irep = interleaved(args, device, data, urls, launch)
            dist.barrier()
            inter = summary(ib, im, iratios, irep)
        # what each rank took as replicated, from its report: rank 0's view
        result = None
        if rank == 0:
            mean = lambda xs: 1000.0 * sum(xs) / len(xs)  # noqa: E731
            replicated = set()
            if args.mode == "ddp":
                replicated = {k[0] for k in expected.rows}
            check = compare(args, urls, expected, world, replicated)
            result = {
                "mode": args.mode, "device": device.type, "world_size": world,
                "torch": torch.__version__, "size": args.size, "model": sz,
                "steps": args.steps, "warmup": args.warmup, "every": args.every,
                "compute": args.compute,
                "step_ms_without": mean(all_base), "step_ms_with": mean(all_mon),
                "ratio": mean(all_mon) / mean(all_base),
                "pairs": len(pair_ratios), "pair_ratios": pair_ratios,
                "median_pair_ratio": sorted(pair_ratios)[len(pair_ratios) // 2],
                "monitor_report": rep, "check": check,
            }
            if inter is not None:
                result["interleaved"] = inter
            with open(args.out, "w") as f:
                json.dump(result, f, indent=1, default=str)
            print(f"step time ratio with/without monitor {result['ratio']:.3f} "
                  f"({result['step_ms_with']:.2f} vs {result['step_ms_without']:.2f} ms); "
                  f"compared {check['points_compared']} points of {check['tensors']} "
                  f"tensors at {len(check['steps'])} steps: "
                  f"{'match' if check['match'] else 'MISMATCH'} (ranks {check['ranks_seen']})",
                  flush=True)
            if inter is not None:
                say_interleaved(inter, args.every)
            if not check["match"]:
                print(json.dumps(check["first_mismatches"][:5], indent=1), flush=True)
                rc = 1
        box = [rc]
        dist.broadcast_object_list(box, src=0)
        rc = box[0]
    finally:
        if daemon is not None:
            daemon.terminate()
            try:
                daemon.wait(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
            shutil.rmtree(tmp, ignore_errors=True)
        dist.destroy_process_group()
    sys.exit(rc)


if __name__ == "__main__":
    main()
