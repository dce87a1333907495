"""Device counting throughput on a GPU: altgrad's Watch (the Monitor's engine)
over the parameters of a transformer of the chosen size, five formats,
against a plain read of the same bytes (w and u summed) in the same process.

  python3 bench/gpu_counts.py [--d-model 768 --layers 12] [--flips] [--json out.json]

Prints, per configuration: milliseconds per sampled step for the whole
engine (copies of w and u into its buffers, amax, scales, counts of every
format, results to pinned host memory) and for the count kernel alone, and
the ratio of a plain read's time to the kernel's (1.0 = as fast as reading
w and u once)."""

import argparse
import json
import sys
import os

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


def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / reps


def run(d, layers, flips, reps):
    torch.manual_seed(0)
    ps = [torch.randn(s, device="cuda") * 0.02 for s in shapes(d, layers)]
    us = [torch.randn_like(p) * 1e-5 for p in ps]
    after = [p + u for p, u in zip(ps, us)]
    n = sum(p.numel() for p in ps)
    watch = _device.Watch([p.numel() for p in ps], torch.float32, "cuda", FORMATS,
                          _device.ScaleRule(), flips=flips)
    which = list(range(len(ps)))
    pinned = torch.empty(len(ps) * len(FORMATS) * 6, dtype=torch.int64, pin_memory=True)

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

    t_engine = timed(engine, reps)
    t_kernel = timed(kernel_only, reps)
    t_read = timed(plain_read, reps)
    return {"d_model": d, "layers": layers, "params": n, "tensors": len(ps), "flips": flips,
            "formats": len(FORMATS), "ms_engine": t_engine, "ms_compute": t_kernel,
            "ms_plain_read": t_read, "ratio_read_over_compute": t_read / t_kernel,
            "triton": watch._tri is not None}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    out = []
    for d, layers in [(768, 12), (1024, 24)]:
        for flips in (False, True):
            r = run(d, layers, flips, args.reps)
            out.append(r)
            print(f"{r['params'] / 1e6:.0f} M params, {r['tensors']} tensors, 5 formats, "
                  f"flips {flips}: engine {r['ms_engine']:.2f} ms/sampled step, compute "
                  f"{r['ms_compute']:.2f} ms, plain read {r['ms_plain_read']:.3f} ms, "
                  f"ratio {r['ratio_read_over_compute']:.2f} (triton {r['triton']})",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
