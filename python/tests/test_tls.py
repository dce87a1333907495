"""Client(tls_cert=, tls_key=, tls_ca=) against a real altgradd whose ingest
and query listeners are tls+tcp:// with client certificates required, over
a throwaway CA made here with scripts/tls-certs.sh (the openssl CLI)."""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile

import numpy as np
import pytest

from daemon_fixture import daemon_binary, eventually

SCRIPTS = pathlib.Path(__file__).resolve().parents[2] / "scripts"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _certs(*args):
    subprocess.run(["bash", str(SCRIPTS / "tls-certs.sh"), *map(str, args)], check=True,
                   stdout=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def tls_daemon():
    top = pathlib.Path(tempfile.mkdtemp(prefix="agpy-tls-", dir="/tmp"))
    ca, other = top / "ca", top / "other"
    _certs("ca", ca, 2)
    _certs("server", ca, "daemon", "localhost", "127.0.0.1", "--days", 2)
    _certs("client", ca, "trainer", "--days", 2)
    _certs("ca", other, 2)
    _certs("client", other, "intruder", "--days", 2)
    ingest = f"tls+tcp://127.0.0.1:{_free_port()}"
    query = f"tls+tcp://localhost:{_free_port()}"
    log_path = top / "altgradd.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [daemon_binary(), "--ingest", ingest, "--query", query, "--db", str(top / "a.db"),
             "--http", "off", "--tls-cert", str(ca / "daemon.pem"), "--tls-key",
             str(ca / "daemon.key"), "--tls-ca", str(ca / "ca.pem")],
            stdout=log, stderr=subprocess.STDOUT, cwd=top)
    d = {"ingest": ingest, "query": query, "ca": ca, "other": other, "proc": proc,
         "good": dict(tls_cert=ca / "trainer.pem", tls_key=ca / "trainer.key",
                      tls_ca=ca / "ca.pem")}
    from altgrad import Client

    def ready():
        if proc.poll() is not None:
            pytest.fail(f"altgradd exited with {proc.returncode}:\n{log_path.read_text()}")
        with Client(ingest_url=ingest, query_url=query, run="probe", **d["good"]) as c:
            return c.status()
    try:
        eventually(ready, what="altgradd to answer status over tls+tcp://")
        yield d
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(top, ignore_errors=True)


def _log(c, steps=4):
    w = np.linspace(1.0, 2.0, 64, dtype=np.float32)
    g = np.full(64, 1e-3, dtype=np.float32)
    for s in range(steps):
        c.log_sgd(s, "fc.weight", w, g, 0.01)


def test_client_keywords_log_and_query_over_tls(tls_daemon):
    from altgrad import Client
    d = tls_daemon
    with Client(d["ingest"], d["query"], run="pytls", **d["good"]) as c:
        _log(c)
        c.flush(30000)
        h = eventually(lambda: (lambda r: r if len(r["points"]) == 4 else None)(
            c.history("fc.weight")), what="the run's history")
        assert [p["step"] for p in h["points"]] == [0, 1, 2, 3]
        assert any(r["name"] == c.run for r in c.runs()["runs"])
        assert c.close() == 0


def test_environment_fills_in_the_keywords(tls_daemon, monkeypatch):
    from altgrad import Client
    d = tls_daemon
    monkeypatch.setenv("ALTGRAD_TLS_CERT", str(d["good"]["tls_cert"]))
    monkeypatch.setenv("ALTGRAD_TLS_KEY", str(d["good"]["tls_key"]))
    monkeypatch.setenv("ALTGRAD_TLS_CA", str(d["good"]["tls_ca"]))
    with Client(d["ingest"], d["query"], run="pytls-env") as c:
        assert c.status()["version"]


def test_a_bad_key_or_missing_file_raises_with_the_reason(tls_daemon):
    from altgrad import Client
    from altgrad.errors import AltgradError
    d = tls_daemon
    bad = dict(d["good"], tls_key=d["other"] / "intruder.key")
    with pytest.raises(AltgradError, match="does not match the certificate"):
        Client(d["ingest"], d["query"], run="x", **bad)
    with pytest.raises(AltgradError, match="cannot read"):
        Client(d["ingest"], d["query"], run="x", **dict(d["good"], tls_ca="/nonexistent.pem"))
    with pytest.raises(AltgradError, match="tls_ca"):
        Client(d["ingest"], d["query"], run="x", tls_cert=d["good"]["tls_cert"],
               tls_key=d["good"]["tls_key"])
    with pytest.raises(TypeError):
        Client(d["ingest"], d["query"], run="x", **dict(d["good"], tls_ca=3))


@pytest.mark.parametrize("who", ["nocert", "intruder"])
def test_the_daemon_refuses_clients_without_a_certificate_of_its_ca(tls_daemon, who):
    from altgrad import Client
    from altgrad.errors import AltgradTimeoutError
    d = tls_daemon
    kw = {"tls_ca": d["good"]["tls_ca"]}
    if who == "intruder":
        kw.update(tls_cert=d["other"] / "intruder.pem", tls_key=d["other"] / "intruder.key")
    c = Client(d["ingest"], d["query"], run=who, query_timeout_ms=1500, close_timeout_ms=1500,
               **kw)
    _log(c, 2)
    with pytest.raises(AltgradTimeoutError, match="no TLS session"):
        c.runs()
    assert c.close() > 0
    assert d["proc"].poll() is None
    with Client(d["ingest"], d["query"], run="after", **d["good"]) as ok:
        assert not any(r["name"].startswith(who) for r in ok.runs()["runs"])
