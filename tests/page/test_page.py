#!/usr/bin/env python3
"""test_page.py - the daemon's web page in a real browser (headless Chromium
over the DevTools protocol, tests/page/cdp.py), against a real altgradd fed
by a real trainer (examples/mlp_train.c, two runs).

Checks, after the page's scripts ran: the runs (A and B side by side, their
drop counts), the tensors (heatmap rows, tensor x format matrix), the heatmap
drawn (cells with a rate, as many as /api/heatmap has), rows sorted by the
whole-run stall rate, the curves of the worst tensor; then a click on a table
row opens that tensor's curves, the filter narrows the rows, sorting by name
orders them. Then, on a database of 70 tensors written by page_fixture: run
B's dropped messages shown as a warning, the matrix's first 60 rows and then
all, the filter's words. Any JavaScript error (the page's #errors, uncaught exceptions,
console errors, failed loads) fails the test; so does a missing chromium.
Saves screenshots to OUT/overview.png and OUT/many-tensors.png (OUT: --out,
the build's page/).

usage: test_page.py --daemon ALTGRADD --trainer AG_MLP_TRAIN --fixture PAGE_FIXTURE --out DIR
Exit 0 when every check passed, 1 otherwise."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cdp import Browser, CdpError  # noqa: E402

DEADLINE_S = 30.0
failures: list[str] = []


def check(cond, what: str):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}", flush=True)
    return cond


class Daemon:
    def __init__(self, exe: str, tmp: str, db: str | None = None, *extra: str):
        self.tmp = tmp
        self.ingest = f"ipc://{tmp}/ingest.sock"
        self.query = f"ipc://{tmp}/query.sock"
        self.log_path = os.path.join(tmp, "altgradd.log")
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([exe, "--ingest", self.ingest, "--query", self.query,
                                      "--db", db or os.path.join(tmp, "altgrad.db"),
                                      "--http", "127.0.0.1:0", *extra],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
        log.close()
        deadline = time.monotonic() + DEADLINE_S
        self.port = 0
        while not self.port:
            if self.proc.poll() is not None:
                raise RuntimeError(f"altgradd exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"altgradd logged no HTTP address:\n{self.log()}")
            m = re.search(r"on http://127\.0\.0\.1:(\d+)/", self.log())
            if m:
                self.port = int(m.group(1))
            else:
                time.sleep(0.05)
        self.base = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def get(self, path: str, **params):
        q = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.base}/api/{path}" + (f"?{q}" if q else ""),
                                    timeout=DEADLINE_S) as r:
            return json.load(r)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def train(trainer: str, d: Daemon, run: str, *extra: str):
    r = subprocess.run([trainer, "--run", run, "--ingest", d.ingest, "--query", d.query,
                        "--print-every", "1000", *extra],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"ag_mlp_train --run {run} exited {r.returncode}:\n{r.stdout}{r.stderr}")


# The first daemon's formats: the seed's five, OCP E4M3 and two block-scaled ones.
BLOCK_FORMATS = "E0M7,E1M6,E3M4,E5M2,E7M0,E4M3,MXFP8_E4M3,NVFP4"

# One expression that reads what the page shows.
STATE = r"""(() => {
  const $ = (s) => document.querySelector(s), all = (s) => [...document.querySelectorAll(s)];
  return {
    errors: $("#errors").textContent, err: $("#err").textContent,
    status: $("#status").textContent,
    hash: location.hash, renders: +document.body.dataset.renders || 0,
    runinfo: all("#runinfo > div").map((d) => d.textContent),
    dropped: all("#runinfo [data-dropped]").map((s) => +s.dataset.dropped),
    heat: all("#heat canvas").map((c) => ({run: c.dataset.run, rows: +c.dataset.rows,
      buckets: +c.dataset.buckets, cells: +c.dataset.cells, h: c.height})),
    heatTitle: $("#t-heat").textContent,
    curvesTitle: $("#t-curves").textContent,
    curves: all("#curves > div").map((b) => ({title: b.querySelector("h3").textContent,
      stall: +(b.querySelector("[data-curve=stall]") || {dataset: {}}).dataset.lines || 0,
      amax: +(b.querySelector("[data-curve=amax]") || {dataset: {}}).dataset.lines || 0,
      scale: +(b.querySelector("[data-curve=scale]") || {dataset: {}}).dataset.lines || 0})),
    matrix: all("#matrix > div").map((b) => ({
      formats: [...b.querySelectorAll("thead th")].slice(1).map((t) => t.textContent),
      names: [...b.querySelectorAll("tbody td.name")].map((t) => t.textContent),
      rates: [...b.querySelectorAll("tbody tr")].map((tr) =>
        [...tr.querySelectorAll("td.num")].map((t) => t.textContent))})),
  };
})()"""


def click_row(b: Browser, name: str):
    ok = b.evaluate("(() => { const td = [...document.querySelectorAll('#matrix td.name')]"
                    f".find((t) => t.textContent === {json.dumps(name)});"
                    " if (!td) return false; td.parentNode.click(); return true; })()")
    check(ok, f"a matrix row for {name} to click")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    ap.add_argument("--trainer", required=True)
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if not shutil.which("chromium"):
        print("FAIL: chromium is not installed (Debian package chromium; "
              "scripts/install-deps.sh installs it)")
        return 1
    tmp = tempfile.mkdtemp(prefix="ag-page-", dir="/tmp")
    d = None
    try:
        # Block-scaled formats beside per-tensor ones (docs/numerics.md).
        d = Daemon(args.daemon, tmp, None, "--formats", BLOCK_FORMATS)
        train(args.trainer, d, "page-a", "--steps", "120", "--seed", "1")
        train(args.trainer, d, "page-b", "--steps", "80", "--seed", "2", "--lr", "0.2")
        status = d.get("status")
        formats = status["formats"].split(",")
        check(formats == BLOCK_FORMATS.split(","), f"status lists the formats: {formats}")
        runs = {r["name"]: r for r in d.get("runs")["runs"]}
        tensors = {run: d.get("tensors", run=run)["tensors"] for run in ("page-a", "page-b")}
        snap_a = sorted(t["name"] for t in tensors["page-a"] if t["snapshots"] > 0)
        check(len(snap_a) >= 4, f"the trainer's run has weight snapshots: {snap_a}")

        with Browser(width=1400, height=1000) as b:
            b.navigate(f"{d.base}/#a=page-a&b=page-b")
            b.wait_for("!!document.body && document.body.dataset.ready === '1'", DEADLINE_S, "the page's first load")
            st = b.evaluate(STATE)
            print(json.dumps({k: st[k] for k in ("heat", "curves", "runinfo")}, indent=1))
            check(st["errors"] == "", f"no JavaScript error on the page: {st['errors']!r}")
            check(st["err"] == "", f"no API error on the page: {st['err']!r}")
            shm = d.get("status")["shm_snapshots"]
            check(shm > 0, "the trainers' snapshots went through shared memory")
            check(f"{shm} snapshots through shared memory" in st["status"],
                  f"the status line tells the snapshots read from shared memory ({shm}): "
                  f"{st['status']!r}")
            check(len(st["runinfo"]) == 2 and "A: page-a" in st["runinfo"][0]
                  and "B: page-b" in st["runinfo"][1], f"both runs shown: {st['runinfo']}")
            check(st["dropped"] == [runs["page-a"]["dropped"], runs["page-b"]["dropped"]],
                  f"drop counts shown as /api/runs has them: {st['dropped']}")
            # Runs carry "world_size" and "incomplete" (steps some rank
            # never sent): the page shows them.
            for line, name in zip(st["runinfo"], ("page-a", "page-b")):
                if "incomplete" in runs[name]:
                    check(f"{runs[name]['incomplete']} incomplete steps" in line,
                          f"incomplete steps shown: {line}")
                if "world_size" in runs[name]:
                    check(f"{runs[name]['world_size']} ranks" in line, f"ranks shown: {line}")
            check([h["run"] for h in st["heat"]] == ["page-a", "page-b"],
                  f"two heatmaps side by side: {st['heat']}")
            # The heatmap of A: one row per tensor with snapshots, every cell
            # with a rate drawn, as /api/heatmap gives them.
            ha = st["heat"][0]
            fmt = "E5M2" if "E5M2" in formats else formats[0]
            api = d.get("heatmap", run="page-a", format=fmt, buckets=ha["buckets"], digits=3)
            want_cells = sum(v is not None for row in api["rates"] for v in row)
            check(ha["rows"] == len(snap_a), f"heatmap rows {ha['rows']} == tensors {len(snap_a)}")
            check(ha["cells"] == want_cells and want_cells > 0,
                  f"heatmap cells drawn {ha['cells']} == cells with a rate {want_cells}")
            # Rows sorted by whole-run stall rate (the page reads it from a
            # heatmap of one bucket): the first row is the worst tensor, and
            # it is the one whose curves are open.
            whole = d.get("heatmap", run="page-a", format=fmt, buckets=1, digits=4)
            check(whole["tensors"] == api["tensors"] and len(whole["overall"]) == len(snap_a),
                  f"one whole-run rate per tensor: {whole}")
            worst = sorted(zip(whole["tensors"], whole["overall"]),
                           key=lambda x: (-(x[1] if x[1] is not None else -1), natural(x[0])))
            names_a = st["matrix"][0]["names"]
            check(names_a[:1] == [worst[0][0]], f"worst tensor first: {names_a[:3]} vs {worst[:3]}")
            check(sorted(names_a) == snap_a, f"the matrix lists the tensors: {names_a}")
            check(st["matrix"][0]["formats"] == formats,
                  f"matrix columns are the formats: {st['matrix'][0]['formats']}")
            # A block-scaled format's column beside the per-tensor ones, its
            # rates those of /api/heatmap (whole run) in that format.
            for f in ("MXFP8_E4M3", "NVFP4"):
                col = formats.index(f)
                wf = d.get("heatmap", run="page-a", format=f, buckets=1, digits=4)
                by = dict(zip(wf["tensors"], wf["overall"]))
                shown = [row[col] for row in st["matrix"][0]["rates"]]
                want = [f"{by[n]:.4f}" for n in names_a]
                check(shown == want and all(v != "-" for v in shown),
                      f"the matrix's {f} column: {shown[:4]} vs {want[:4]}")
            check(st["curvesTitle"] == f"Curves: {worst[0][0]}", f"curves open: {st['curvesTitle']}")
            for c in st["curves"]:
                check(c["stall"] == len(formats) and c["amax"] == 1 and c["scale"] >= 1,
                      f"curves drawn (one stall line per format, amax, scale): {c}")
            b.screenshot(os.path.join(args.out, "overview.png"))

            # A click on another tensor's row opens its curves in both runs.
            other = next(n for n in snap_a if n != worst[0][0])
            click_row(b, other)
            b.wait_for(f"document.getElementById('t-curves').textContent === 'Curves: ' + {json.dumps(other)}"
                       " && [...document.querySelectorAll('#curves [data-curve=stall]')]"
                       ".every((e) => +e.dataset.lines > 0)", DEADLINE_S, "the clicked tensor's curves")
            st = b.evaluate(STATE)
            check(all(other in c["title"] and c["stall"] == len(formats) for c in st["curves"]),
                  f"the clicked tensor's curves, A and B: {st['curves']}")
            check("t=" + urllib.parse.quote(other) in st["hash"], f"the choice is in the URL: {st['hash']}")

            # The filter narrows the rows, sorting by name orders them.
            word = other.split(".")[0]
            b.evaluate(f"(() => {{ const f = document.getElementById('filter'); f.value = {json.dumps(word)};"
                       " f.dispatchEvent(new Event('input')); const s = document.getElementById('sort');"
                       " s.value = 'name'; s.dispatchEvent(new Event('change')); })()")
            st = b.evaluate(STATE)
            want = sorted((n for n in snap_a if word in n), key=natural)
            check(st["heat"][0]["rows"] == len(want), f"filter '{word}': rows {st['heat'][0]['rows']}, want {len(want)}")
            check(st["matrix"][0]["names"] == want, f"sorted by name: {st['matrix'][0]['names']} vs {want}")
            # Sorted by the last bucket's rate, all rows again.
            b.evaluate("(() => { const f = document.getElementById('filter'); f.value = '';"
                       " f.dispatchEvent(new Event('input')); const s = document.getElementById('sort');"
                       " s.value = 'last'; s.dispatchEvent(new Event('change')); })()")
            st = b.evaluate(STATE)
            last = sorted(((n, r[-1]) for n, r in zip(api["tensors"], api["rates"])),
                          key=lambda x: (-(x[1] if x[1] is not None else -1), natural(x[0])))
            check(st["heat"][0]["rows"] == len(snap_a), f"filter cleared: {st['heat'][0]['rows']} rows")
            check(st["matrix"][0]["names"] == [n for n, _ in last],
                  f"sorted by the last bucket: {st['matrix'][0]['names']} vs {last}")
            # The heatmap in a block-scaled format: a click on its column.
            before = b.evaluate(STATE)["renders"]
            b.evaluate("[...document.querySelectorAll('#matrix thead th')]"
                       ".find((t) => t.textContent === 'MXFP8_E4M3').click()")
            b.wait_for(f"+document.body.dataset.renders > {before}", DEADLINE_S,
                       "the heatmap in MXFP8_E4M3")
            st = b.evaluate(STATE)
            hb = st["heat"][0]
            apib = d.get("heatmap", run="page-a", format="MXFP8_E4M3", buckets=hb["buckets"], digits=3)
            want_b = sum(v is not None for row in apib["rates"] for v in row)
            check(hb["cells"] == want_b and want_b > 0,
                  f"MXFP8_E4M3 heatmap cells drawn {hb['cells']} == cells with a rate {want_b}")
            check("f=MXFP8_E4M3" in st["hash"], f"the format is in the URL: {st['hash']}")
            check(st["errors"] == "" and st["err"] == "", f"no errors after the clicks: {st['errors']}{st['err']}")
            errs = b.errors()
            check(not errs, f"no console errors or exceptions in chromium: {errs}")
        check(d.stop() == 0, "altgradd stopped cleanly")
        many_tensors(args, tmp)
    except (CdpError, RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        traceback.print_exc()
        failures.append(f"{type(e).__name__}: {e}")
        if d:
            print(d.log())
    finally:
        if d:
            d.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print(f"page in chromium: every check passed; screenshot {os.path.join(args.out, 'overview.png')}")
    return 0


def many_tensors(args, tmp: str):
    """More tensors than the matrix shows at first, and a run with dropped
    messages: a database written by page_fixture (70 tensors; run B has 37
    drops), served by a second daemon."""
    db = os.path.join(tmp, "fixture.db")
    r = subprocess.run([args.fixture, db, "70", "50", "40"], capture_output=True, text=True,
                       timeout=120)
    if r.returncode:
        raise RuntimeError(f"page_fixture: {r.stdout}{r.stderr}")
    d = Daemon(args.daemon, tmp, db)
    try:
        names = sorted(t["name"] for t in d.get("tensors", run="big-a")["tensors"])
        with Browser(width=1400, height=1000) as b:
            b.navigate(f"{d.base}/#a=big-a&b=big-b")
            b.wait_for("!!document.body && document.body.dataset.ready === '1'", DEADLINE_S,
                       "the page's first load")
            st = b.evaluate(STATE)
            check(st["errors"] == "" and st["err"] == "", f"no errors: {st['errors']}{st['err']}")
            check(st["dropped"] == [0, 37], f"run B's 37 dropped messages shown: {st['dropped']}")
            warn = b.evaluate("[...document.querySelectorAll('#runinfo [data-dropped]')]"
                              ".map((e) => e.className)")
            check(warn == ["", "warn"], f"drops shown as a warning: {warn}")
            check([h["rows"] for h in st["heat"]] == [70, 70], f"70 heatmap rows each: {st['heat']}")
            check(all(h["cells"] == 70 * h["buckets"] for h in st["heat"]),
                  f"every cell has a rate: {st['heat']}")
            check(len(st["matrix"][0]["names"]) == 60, "the matrix shows 60 rows at first")
            b.screenshot(os.path.join(args.out, "many-tensors.png"))
            b.evaluate("document.querySelector('#matrix button').click()")
            st = b.evaluate(STATE)
            check(sorted(st["matrix"][0]["names"]) == names, "then all 70")
            # Words of a name, in any order, all must match.
            b.evaluate("(() => { const f = document.getElementById('filter'); f.value = 'WEIGHT attn';"
                       " f.dispatchEvent(new Event('input')); })()")
            st = b.evaluate(STATE)
            want = [n for n in names if "attn" in n and "weight" in n]
            check(sorted(st["matrix"][0]["names"]) == want and st["heat"][0]["rows"] == len(want),
                  f"filter 'WEIGHT attn': {len(st['matrix'][0]['names'])} rows, want {len(want)}")
            errs = b.errors()
            check(not errs, f"no console errors or exceptions in chromium: {errs}")
        check(d.stop() == 0, "the second altgradd stopped cleanly")
    finally:
        d.stop()


def natural(s: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", s)]


if __name__ == "__main__":
    sys.exit(main())
