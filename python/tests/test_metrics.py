"""/metrics through a real Prometheus parser, its documentation, and the
Grafana dashboard over it.

A real daemon is fed by a real trainer (examples/ag_mlp_train: snapshots and
statistics) and by counts computed on the trainer's side without flips (so
some points have no flips sample); then:
- `promtool check metrics` (Debian's prometheus) parses and lints the scrape:
  any problem it reports fails, lint warnings included;
- the families of the scrape are exactly those documented as stable in
  docs/daemon.md's metrics table, with the same types and label names;
- examples/grafana/altgrad.json is valid JSON, each of its expressions parses
  as PromQL (`promtool check rules`), and each metric it queries is a family
  of the scrape.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import tempfile
import urllib.request

import pytest

from daemon_fixture import build_dir, daemon_binary, eventually

ROOT = pathlib.Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "examples" / "grafana" / "altgrad.json"


def _promtool() -> str:
    exe = shutil.which("promtool")
    if exe is None:
        pytest.fail("promtool not found: install Debian's prometheus package "
                    "(scripts/install-deps.sh does)")
    return exe


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Per-tensor and block-scaled formats side by side (docs/numerics.md).
METRIC_FORMATS = "E5M2,E4M3,MXFP8_E4M3,NVFP4"


@pytest.fixture(scope="module")
def scrape():
    top = pathlib.Path(tempfile.mkdtemp(prefix="agpy-metrics-", dir="/tmp"))
    ingest, query = f"ipc://{top}/ingest.sock", f"ipc://{top}/query.sock"
    port = _free_port()
    log_path = top / "altgradd.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([daemon_binary(), "--ingest", ingest, "--query", query,
                                 "--db", str(top / "a.db"), "--http", f"127.0.0.1:{port}",
                                 "--formats", METRIC_FORMATS],
                                stdout=log, stderr=subprocess.STDOUT, cwd=top)
    try:
        trainer = os.path.join(build_dir(), "examples", "ag_mlp_train")
        if not os.access(trainer, os.X_OK):
            pytest.fail(f"the example trainer is not at {trainer}")

        def up():
            if proc.poll() is not None:
                pytest.fail(f"altgradd exited:\n{log_path.read_text()}")
            return os.path.exists(f"{top}/ingest.sock")
        eventually(up, what="altgradd's ingest socket")
        out = subprocess.run([trainer, "--run", 'mlp "quoted"\\run', "--steps", "30",
                              "--ingest", ingest, "--query", query], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "undelivered 0" in out.stderr + out.stdout
        # counts computed by the trainer, without flips: no flips sample for them
        from altgrad import Client
        with Client(ingest, query, run="device-counts") as c:
            c.log_counts(0, ["dev.weight"], ["E5M2"], [[[3, 10, 0, 1, 0]]], [[0.5]], [2.0],
                         [100], [0], form="update")
            c.flush(30000)
        url = f"http://127.0.0.1:{port}/metrics"

        def fetch():
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
            return text if 'run="device-counts"' in text else None
        text = eventually(fetch, what="/metrics with both runs")
        (top / "metrics.txt").write_text(text)
        yield {"text": text, "dir": top}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(top, ignore_errors=True)


def _families(text: str) -> dict:
    """{name: (type, set of label names)} from the scrape."""
    fams = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)$", line)
        if m:
            fams[m.group(1)] = (m.group(2), set())
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? ", line)
        assert m, f"unparsed sample line {line!r}"
        labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
        assert m.group(1) in fams, f"sample of undeclared family: {line!r}"
        fams[m.group(1)][1].update(labels)
    return fams


def _documented() -> dict:
    """{name: (type, set of label names)} from docs/daemon.md's metrics table."""
    doc = (ROOT / "docs" / "daemon.md").read_text()
    rows = re.findall(r"^\| `(altgrad_[a-z0-9_]+)` \| (counter|gauge|histogram|summary) "
                      r"\|([^|]*)\|", doc, flags=re.M)
    assert rows, "docs/daemon.md has no metrics table"
    return {name: (kind, set(re.findall(r"`([a-z_]+)`", labels))) for name, kind, labels in rows}


def test_promtool_parses_and_lints_the_scrape_without_a_problem(scrape):
    out = subprocess.run([_promtool(), "check", "metrics"], input=scrape["text"],
                         capture_output=True, text=True, timeout=60)
    # exit 1: not parseable, 3: lint problems; both print what is wrong
    assert out.returncode == 0 and not (out.stdout + out.stderr).strip(), \
        f"promtool check metrics (exit {out.returncode}):\n{out.stdout}{out.stderr}"


def test_every_format_has_its_stall_rate_block_scaled_ones_too(scrape):
    rates = re.findall(r'^altgrad_stall_rate\{[^}]*format="([A-Za-z0-9_-]+)"[^}]*\} (\S+)$',
                       scrape["text"], flags=re.M)
    fmts = {f for f, _ in rates}
    assert fmts == set(METRIC_FORMATS.split(",")), fmts
    for f, v in rates:
        assert 0.0 <= float(v) <= 1.0, (f, v)


def test_the_check_fails_on_a_broken_scrape(scrape):
    """promtool does see problems: the same scrape with one family's help
    removed, and with a bad sample line, is refused."""
    text = scrape["text"]
    no_help = re.sub(r"# HELP altgrad_runs [^\n]*\n", "", text)
    bad = text + "altgrad_runs{run=\"x} 1\n"
    for broken in (no_help, bad):
        out = subprocess.run([_promtool(), "check", "metrics"], input=broken,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0


def test_every_family_is_documented_as_stable_and_every_documented_one_is_there(scrape):
    fams, doc = _families(scrape["text"]), _documented()
    assert set(fams) == set(doc), \
        f"undocumented: {sorted(set(fams) - set(doc))}, missing: {sorted(set(doc) - set(fams))}"
    # the families of runs of many ranks have no sample in this scrape (its
    # runs have one rank): no labels to see there, only their type
    no_sample = {"altgrad_run_incomplete_steps", "altgrad_rank_dropped_total"}
    for name, (kind, labels) in fams.items():
        assert kind == doc[name][0], f"{name}: type {kind}, documented {doc[name][0]}"
        if name in no_sample and not labels:
            continue
        assert labels == doc[name][1], f"{name}: labels {labels}, documented {doc[name][1]}"
    # the data of the run is there, its odd name escaped as the format asks
    assert 'altgrad_stall_rate{run="mlp \\"quoted\\"\\\\run",tensor="fc1.weight",format="E5M2"}' \
        in scrape["text"]
    assert 'altgrad_flips{run="device-counts"' not in scrape["text"]
    assert 'altgrad_stall_rate{run="device-counts",tensor="dev.weight",format="E5M2"} 0.3' \
        in scrape["text"]


def _dashboard_exprs() -> list:
    dash = json.loads(DASHBOARD.read_text())
    exprs = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                exprs.append(t["expr"])
    walk(dash["panels"])
    for v in dash["templating"]["list"]:
        q = v.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if v["type"] == "query":
            m = re.fullmatch(r"label_values\((.*), *[a-z_]+\)", q)
            assert m, f"variable {v['name']}: {q}"
            exprs.append(m.group(1))
    return exprs


def _as_promql(expr: str) -> str:
    """Grafana's variables replaced by what they expand to."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    return re.sub(r"\$\{?[a-z_]+\}?", ".*", expr)


def test_the_grafana_dashboard_parses_and_queries_only_metrics_that_exist(scrape):
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr{i}", "expr": _as_promql(e)} for i, e in enumerate(exprs)]}]}
    path = scrape["dir"] / "dashboard-rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    out = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, f"an expression is no PromQL:\n{out.stdout}{out.stderr}"
    fams = _families(scrape["text"])
    used = {m for e in exprs for m in re.findall(r"\baltgrad_[a-z0-9_]+", e)}
    assert used - set(fams) == set(), f"queried but not exported: {sorted(used - set(fams))}"
    # the dashboard shows what the issue asks for
    for needed in ("altgrad_stall_rate", "altgrad_dropped_total", "altgrad_messages_total",
                   "altgrad_queue_depth"):
        assert needed in used
