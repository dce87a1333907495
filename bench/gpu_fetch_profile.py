"""Where the old compute="daemon" fetch from CUDA spent the training thread's
time, per sampled step of an ~85 M-parameter model (150 tensors): packing w
and u on the device, a fresh pinned host buffer (about 650 ms when the pinned
cache has none to give), launching the device-to-host copy, waiting for it.

  python3 bench/gpu_fetch_profile.py
"""
import time, torch
torch.manual_seed(0)
dev = "cuda"
# 150 tensors, ~85M params like the char LM (12 layers x 12 tensors + embeddings)
sizes = [768*768*3, 768*3, 768*768, 768, 768, 768, 768*3072, 3072, 3072*768, 768, 768, 768] * 12 + [256*768, 768*256, 256, 768, 768, 1024*768]
ws = [torch.randn(n, device=dev) for n in sizes]
gs = [torch.randn(n, device=dev) * 1e-3 for n in sizes]
print("params", sum(sizes), "tensors", len(sizes))
for it in range(6):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    flat = torch.cat([t.reshape(-1).to(torch.float32) for w, g in zip(ws, gs) for t in (w, g)])
    t1 = time.perf_counter()
    host = torch.empty(flat.numel(), dtype=torch.float32, pin_memory=True)
    t2 = time.perf_counter()
    host.copy_(flat, non_blocking=True)
    t3 = time.perf_counter()
    ev = torch.cuda.Event(); ev.record()
    t4 = time.perf_counter()
    ev.synchronize()
    t5 = time.perf_counter()
    print(f"cat {1e3*(t1-t0):.1f} ms, pinned empty {1e3*(t2-t1):.1f}, copy launch {1e3*(t3-t2):.1f}, event {1e3*(t4-t3):.2f}, D2H wait {1e3*(t5-t4):.1f} ms ({flat.numel()*4/1e9/(t5-t2):.1f} GB/s incl launch)")
    keep = host if it % 2 == 0 else None  # half the time the previous buffer is still held
