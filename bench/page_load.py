#!/usr/bin/env python3
"""page_load.py - how fast the daemon's page loads for a big model.

Builds a database of two runs of 500 tensors x 2,000 steps x 5 formats
(bench/page_fixture.c, through the store as the daemon writes it; a few
minutes, kept in --work for the next time), starts altgradd on it with HTTP on
a free port, and opens the page in headless Chromium (tests/page/cdp.py) a few
times: run A alone, then A and B side by side. Prints, per view, the load time
(navigation start to the page's first complete drawing: <body data-load-ms>,
median and worst of --repeat loads) and every request the page made at load,
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


def measure(b: Browser, url: str, repeat: int):
    loads, reqs = [], None
    for i in range(repeat):
        b.navigate("about:blank")
        b.navigate(url)
        b.wait_for(READY, 60, "the page's first drawing")
        loads.append(int(b.evaluate("+document.body.dataset.loadMs")))
        if i == 0:
            reqs = b.evaluate(RESOURCES)
            cells = b.evaluate("[...document.querySelectorAll('#heat canvas')].map((c) => "
                               "[c.dataset.run, +c.dataset.rows, +c.dataset.buckets, +c.dataset.cells])")
            errs = b.evaluate("document.getElementById('errors').textContent + "
                              "document.getElementById('err').textContent")
            if errs:
                sys.exit(f"the page reported errors: {errs}")
    return loads, reqs, cells


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
        r = subprocess.run([os.path.join(a.build, "bench", "page_fixture"), db + ".tmp",
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
                loads, reqs, cells = measure(b, base + "/" + frag, a.repeat)
                total = sum(r["bytes"] for r in reqs)
                print(f"\n{view}: load {statistics.median(loads)} ms median, {max(loads)} ms worst "
                      f"({', '.join(map(str, loads))}); {len(reqs)} requests, {total / 1024:.0f} KiB "
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
