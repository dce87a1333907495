#!/usr/bin/env python3
"""page_load.py - how fast the daemon's page loads for a big model.

Builds a database of two runs of 500 tensors x 2,000 steps x 5 formats
(tests/page/page_fixture.c, through the store as the daemon writes it; a few
minutes, kept in --work for the next time), starts altgradd on it with HTTP on
a free port, and opens the page in headless Chromium (tests/page/cdp.py) a few
times: run A alone, then A and B side by side. Prints, per view, the load time
(navigation start to the page's first complete drawing: <body data-load-ms>,
median, best and worst of --repeat loads, the first one cold, then reloads),
the CPU time altgradd and chromium spent per warm load (robust to a busy
machine, where the wall time is not) and every request the page made at load,
with its JSON size and its time in the browser (Resource Timing).

usage: bench/page_load.py [--build build] [--work /tmp/ag-page-bench]
                          [--tensors 500] [--steps 2000] [--repeat 5]
                          [--screenshot FILE.png]"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "page"))
from cdp import Browser  # noqa: E402

READY = "!!document.body && document.body.dataset.ready === '1'"
RESOURCES = """(() => performance.getEntriesByType('resource').map((e) => ({
  url: e.name, bytes: e.decodedBodySize, ms: e.duration})))()"""


def start_daemon(exe: str, work: str, db: str):
    log_path = os.path.join(work, "altgradd.log")
    log = open(log_path, "wb")
    p = subprocess.Popen([exe, "--ingest", f"ipc://{work}/ingest.sock", "--query",
                          f"ipc://{work}/query.sock", "--db", db, "--http", "127.0.0.1:0",
                          "--log-level", "notice"], stdout=log, stderr=subprocess.STDOUT, cwd=work)
    log.close()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if p.poll() is not None:
            sys.exit(f"altgradd exited {p.returncode}: {open(log_path).read()[-2000:]}")
        m = re.search(r"on http://127\.0\.0\.1:(\d+)/", open(log_path, errors="replace").read())
        if m:
            return p, f"http://127.0.0.1:{m.group(1)}"
        time.sleep(0.1)
    p.kill()
    sys.exit("altgradd did not start serving HTTP")


CLK = os.sysconf("SC_CLK_TCK")


def descendants(root: int) -> list[int]:
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return out


def cpu_ms(pids) -> dict[int, float]:
    """utime + stime of each live pid, in ms."""
    out = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                v = f.read().rsplit(")", 1)[1].split()
            out[p] = (int(v[11]) + int(v[12])) * 1000.0 / CLK
        except (OSError, IndexError, ValueError):
            pass
    return out


def spent(before: dict, after: dict) -> float:
    return sum(after[p] - before[p] for p in after if p in before)


def measure(b: Browser, daemon_pid: int, url: str, repeat: int):
    """The first load navigates (cold), the others reload the page in the
    same renderer: their CPU time, daemon and browser, is counted."""
    loads, reqs, cells = [], None, None
    b.navigate("about:blank")
    b.navigate(url)
    d_cpu = b_cpu = 0.0
    for i in range(repeat):
        if i:
            pids = descendants(b.proc.pid)
            c0, d0 = cpu_ms(pids), cpu_ms([daemon_pid])
            b.evaluate("window.__old = 1")
            b.call("Page.reload", ignoreCache=True)
        b.wait_for("!window.__old && " + READY, 60, "the page's first drawing")
        if i:
            b_cpu += spent(c0, cpu_ms(pids))
            d_cpu += spent(d0, cpu_ms([daemon_pid]))
        loads.append(int(b.evaluate("+document.body.dataset.loadMs")))
        if i == 0:
            reqs = b.evaluate(RESOURCES)
            cells = b.evaluate("[...document.querySelectorAll('#heat canvas')].map((c) => "
                               "[c.dataset.run, +c.dataset.rows, +c.dataset.buckets, +c.dataset.cells])")
            errs = b.evaluate("document.getElementById('errors').textContent + "
                              "document.getElementById('err').textContent")
            if errs:
                sys.exit(f"the page reported errors: {errs}")
    n = max(1, repeat - 1)
    return loads, reqs, cells, d_cpu / n, b_cpu / n


def short(url: str) -> str:
    u = urllib.parse.urlsplit(url)
    return u.path + ("?" + urllib.parse.unquote(u.query) if u.query else "")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--work", default="/tmp/ag-page-bench")
    ap.add_argument("--tensors", type=int, default=500)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--screenshot", help="save the A and B view here (PNG)")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    db = os.path.join(a.work, f"page-{a.tensors}x{a.steps}.db")
    if not os.path.exists(db):
        t0 = time.monotonic()
        r = subprocess.run([os.path.join(a.build, "tests", "page", "page_fixture"), db + ".tmp",
                            str(a.tensors), str(a.steps)], text=True)
        if r.returncode:
            sys.exit("page_fixture failed")
        for ext in ("", "-wal", "-shm"):
            if os.path.exists(db + ".tmp" + ext):
                os.rename(db + ".tmp" + ext, db + ext)
        print(f"built {db} in {time.monotonic() - t0:.0f} s")
    daemon, base = start_daemon(os.path.join(a.build, "daemon", "altgradd"), a.work, db)
    try:
        with Browser(width=a.width, height=1000, timeout=60) as b:
            print(f"page load, {a.tensors} tensors x {a.steps} steps x 5 formats, "
                  f"chromium {a.width} px wide, {a.repeat} loads each")
            for view, frag in (("run A", "#a=big-a"), ("runs A and B", "#a=big-a&b=big-b")):
                with open("/proc/loadavg") as f:
                    load_avg = f.read().split()[0]
                loads, reqs, cells, d_cpu, b_cpu = measure(b, daemon.pid, base + "/" + frag, a.repeat)
                total = sum(r["bytes"] for r in reqs)
                print(f"\n{view}: load {statistics.median(loads)} ms median, {min(loads)} best, "
                      f"{max(loads)} worst ({', '.join(map(str, loads))}; first one cold; machine "
                      f"load average {load_avg}); CPU per warm load: altgradd {d_cpu:.0f} ms, "
                      f"chromium {b_cpu:.0f} ms; {len(reqs)} requests, {total / 1024:.0f} KiB "
                      f"of JSON; heatmaps (run, rows, buckets, cells): {cells}")
                print(f"  {'bytes':>9} {'ms':>7}  request")
                for r in reqs:
                    print(f"  {r['bytes']:>9} {r['ms']:>7.1f}  {short(r['url'])}")
            if a.screenshot:
                b.screenshot(a.screenshot, max_height=3000)
            errs = b.errors()
            if errs:
                sys.exit(f"chromium saw errors: {errs}")
        # The heatmap at full precision beside the page's digits=3.
        sizes = {}
        for d in ("", "&digits=3"):
            with urllib.request.urlopen(f"{base}/api/heatmap?run=big-a&format=E5M2&buckets=200{d}",
                                        timeout=60) as r:
                sizes[d] = len(r.read())
        print(f"\n/api/heatmap?run=big-a&buckets=200: {sizes['']} bytes with exact rates, "
              f"{sizes['&digits=3']} with digits=3")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)


if __name__ == "__main__":
    main()
