"""A real altgradd on temporary ipc sockets and a temporary database, for the
Client, Monitor and trainer tests. A missing daemon binary fails the test:
these tests exist to run against the real thing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest


def build_dir() -> str:
    env = os.environ.get("ALTGRAD_BUILD_DIR")
    if env:
        return env
    lib = os.environ.get("ALTGRAD_LIBRARY")
    if lib:
        return os.path.dirname(os.path.abspath(lib))
    from altgrad import library_path
    return os.path.dirname(os.path.abspath(library_path()))


def daemon_binary() -> str:
    exe = os.path.join(build_dir(), "daemon", "altgradd")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"altgradd not found at {exe}: build it (target altgradd) or set "
                    "ALTGRAD_BUILD_DIR to the build directory")
    return exe


def cli_binary() -> str:
    exe = os.path.join(build_dir(), "client", "cli", "altgrad")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"the altgrad CLI is not at {exe}")
    return exe


def eventually(probe, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll probe() until it returns something truthy (returned), or fail the
    test after `timeout` seconds. For waiting on the daemon, not for timing."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            got = probe()
            if got:
                return got
        except Exception as e:  # not ready yet: keep the last reason
            last_exc = e
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}" + (f": {last_exc!r}" if last_exc else ""))
        time.sleep(interval)


class Daemon:
    def __init__(self):
        self.exe = daemon_binary()
        self.dir = tempfile.mkdtemp(prefix="agpy-", dir="/tmp")
        self.ingest = f"ipc://{self.dir}/ingest.sock"
        self.query = f"ipc://{self.dir}/query.sock"
        self.db = os.path.join(self.dir, "altgrad.db")
        self.log_path = os.path.join(self.dir, "altgradd.log")
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        # No HTTP: parallel test daemons must not race for port 8787.
        self.proc = subprocess.Popen([self.exe, "--ingest", self.ingest, "--query", self.query,
                                      "--db", self.db, "--http", "off"], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=self.dir)
        log.close()
        from altgrad import Client

        def ready():
            if self.proc.poll() is not None:
                pytest.fail(f"altgradd exited with {self.proc.returncode}:\n{self.log()}")
            with Client(ingest_url=self.ingest, query_url=self.query, run="probe") as c:
                return c.status()
        eventually(ready, what="altgradd to answer status")
        return self

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def client(self, run: str, **kw):
        from altgrad import Client
        return Client(ingest_url=self.ingest, query_url=self.query, run=run, **kw)

    def halt(self) -> int:
        """Stop the daemon with SIGTERM (its files stay, for a restart); its
        exit status."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc is not None else 0

    def stop(self):
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)
