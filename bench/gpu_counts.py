"""Device counting throughput: altgrad's Watch (the Monitor's engine) over
the parameters of a transformer of the chosen size, five formats (or with
--block, the seed's five and MXFP8_E4M3, NVFP4), against a plain read of the
same bytes (w and u summed) in the same process; each configuration without
and with the quantization error (the Monitor's quant_error), and their ratio.

  python3 bench/gpu_counts.py [--device cpu] [--block] [--json out.json]

Prints, per configuration: milliseconds per sampled step for the whole
engine (copies of w and u into its buffers, amax, scales, counts of every
format, results to pinned host memory) and for the count kernel alone, and
the ratio of a plain read's time to the kernel's (1.0 = as fast as reading
w and u once). On the CPU (--device cpu: the eager path) the models are
smaller."""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))

from altgrad import _device  # noqa: E402

FORMATS = ["E0M7", "E1M6", "E3M4", "E5M2", "E7M0"]


def shapes(d, layers, vocab=96, context=256):
    s = [(vocab, d), (context, d)]
    for _ in range(layers):
        s += [(d,), (d,), (3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (4 * d, d), (4 * d,),
              (d, 4 * d), (d,)]
    s += [(d,), (d,), (vocab, d), (vocab,)]
    return s


def timed(fn, reps, device="cuda"):
    fn()
    if device == "cpu":
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) * 1000 / reps
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


def run(d, layers, flips, reps, device="cuda", formats=FORMATS, qerr=False):
    torch.manual_seed(0)
    ps = [torch.randn(s, device=device) * 0.02 for s in shapes(d, layers)]
    us = [torch.randn_like(p) * 1e-5 for p in ps]
    after = [p + u for p, u in zip(ps, us)]
    n = sum(p.numel() for p in ps)
    watch = _device.Watch([p.numel() for p in ps], torch.float32, device, formats,
                          _device.ScaleRule(), flips=flips, qerr=qerr)
    which = list(range(len(ps)))
    pinned = torch.empty(len(ps) * len(formats) * 6, dtype=torch.int64,
                         pin_memory=device == "cuda")

    def engine():
        watch.load_w(ps)
        watch.load_v(after, minus_w=True)
        out = watch.compute(which)
        pinned.copy_(out["counts"].view(-1), non_blocking=True)

    def kernel_only():
        watch.compute(which)

    flat_w, flat_v = watch.W, watch.V

    def plain_read():
        torch.add(flat_w, flat_v).sum()

    t_engine = timed(engine, reps, device)
    t_kernel = timed(kernel_only, reps, device)
    t_read = timed(plain_read, reps, device)
    return {"d_model": d, "layers": layers, "params": n, "tensors": len(ps), "flips": flips,
            "qerr": qerr, "device": device, "formats": list(formats),
            "ms_engine": t_engine, "ms_compute": t_kernel,
            "ms_plain_read": t_read, "ratio_read_over_compute": t_read / t_kernel,
            "triton": watch._tri is not None}


def qerr_cost(d, layers, flips, reps, device, formats, rounds):
    """compute() with and without the quantization error, alternated (ABBA)
    over rounds so that drift and neighbours load both alike: the median of
    each, and their ratio."""
    torch.manual_seed(0)
    ps = [torch.randn(s, device=device) * 0.02 for s in shapes(d, layers)]
    us = [torch.randn_like(p) * 1e-5 for p in ps]
    which = list(range(len(ps)))
    ws = {}
    for q in (False, True):
        w = _device.Watch([p.numel() for p in ps], torch.float32, device, formats,
                          _device.ScaleRule(), flips=flips, qerr=q)
        w.load_w(ps)
        w.load_v(us)
        ws[q] = w
    times = {False: [], True: []}
    for r in range(rounds):
        for q in ((False, True) if r % 2 == 0 else (True, False)):
            times[q].append(timed(lambda: ws[q].compute(which), reps, device))
    med = {q: sorted(t)[len(t) // 2] for q, t in times.items()}
    return {"d_model": d, "layers": layers, "flips": flips, "device": device,
            "formats": list(formats), "rounds": rounds, "ms_compute_without": med[False],
            "ms_compute_with_qerr": med[True], "ratio_with_over_without": med[True] / med[False]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--block", action="store_true",
                    help="also MXFP8_E4M3 and NVFP4 (block scaling)")
    args = ap.parse_args()
    formats = FORMATS + (["MXFP8_E4M3", "NVFP4"] if args.block else [])
    cpu = args.device == "cpu"
    reps = args.reps or (1 if cpu else 20)
    rounds = args.rounds or (6 if cpu else 10)
    configs = [(256, 4)] if cpu else [(768, 12), (1024, 24)]
    out = []
    for d, layers in configs:
        for flips in (False, True):
            r = run(d, layers, flips, reps, args.device, formats)
            out.append(r)
            print(f"{r['params'] / 1e6:.1f} M params, {r['tensors']} tensors, "
                  f"{len(formats)} formats, flips {flips}: engine "
                  f"{r['ms_engine']:.2f} ms/sampled step, compute {r['ms_compute']:.2f} ms, "
                  f"plain read {r['ms_plain_read']:.3f} ms, ratio "
                  f"{r['ratio_read_over_compute']:.3f} (triton {r['triton']})", flush=True)
            q = qerr_cost(d, layers, flips, reps, args.device, formats, rounds)
            out.append(q)
            print(f"  quantization error: compute {q['ms_compute_without']:.2f} ms without, "
                  f"{q['ms_compute_with_qerr']:.2f} ms with (median of {rounds}, ABBA): "
                  f"ratio {q['ratio_with_over_without']:.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
