"""unitrun.py - run altgradd the way systemd/altgradd.service would, for tests.

Parses the unit, builds the daemon's command line from its ExecStart, points
the example config at a temporary directory, listens on a $NOTIFY_SOCKET
datagram socket and drives the lifecycle: READY=1, watchdog pings, SIGHUP
reload, SIGTERM stop. Used by test_unit_notify.py and test_unit_sandbox.py.
"""
import os
import re
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import time

SKIP = 77  # ctest SKIP_RETURN_CODE
WATCHDOG_USEC = 1_000_000  # 1 s: the daemon should ping every 0.5 s
DEADLINE_S = 60.0  # generous bound for any one expected event (sanitizers are slow)


class TestFailure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise TestFailure(what)
    print("ok   " + what, flush=True)


def parse_unit(path):
    """[Service] settings of a unit file: name -> list of values, in order."""
    settings = {}
    section = None
    with open(path, encoding="utf-8") as f:
        lines = f.read().replace("\\\n", " ").splitlines()
    for raw in lines:
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        if section != "Service" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_value(settings, key, default=None):
    values = settings.get(key)
    return values[-1] if values else default


def exec_argv(settings, daemon, config):
    """The ExecStart command with the binary and --config value replaced."""
    line = unit_value(settings, "ExecStart")
    if not line:
        raise TestFailure("unit has no ExecStart")
    argv = shlex.split(line.lstrip("-@:+!"))
    check(os.path.basename(argv[0]) == "altgradd", "ExecStart runs altgradd")
    argv[0] = os.path.abspath(daemon)
    if "--config" not in argv[:-1]:
        raise TestFailure("ExecStart passes no --config")
    i = argv.index("--config")
    check(argv[i + 1] == "/etc/altgrad/altgradd.conf",
          "ExecStart reads /etc/altgrad/altgradd.conf")
    argv[i + 1] = config
    return argv


def unit_environment(settings):
    env = {}
    for value in settings.get("Environment", []):
        for item in shlex.split(value):
            k, _, v = item.partition("=")
            env[k] = v
    return env


def unit_umask(settings):
    return int(unit_value(settings, "UMask", "0022"), 8)


class Workdir:
    """A temporary tree standing in for /run/altgrad, /var/lib/altgrad and
    /etc/altgrad, plus the notify socket and an empty working directory,
    under base (default: the temporary directory)."""

    def __init__(self, example_config, base=None):
        self.root = tempfile.mkdtemp(prefix="altgrad-unit-", dir=base)
        os.chmod(self.root, 0o755)
        self.run = os.path.join(self.root, "run")
        self.state = os.path.join(self.root, "state")
        self.etc = os.path.join(self.root, "etc")
        self.cwd = os.path.join(self.root, "cwd")
        for d in (self.run, self.state, self.etc, self.cwd):
            os.mkdir(d, 0o750)
        self.config = os.path.join(self.etc, "altgradd.conf")
        with open(example_config, encoding="utf-8") as f:
            text = f.read()
        # The installed example names the systemd paths; move them here.
        text = text.replace("/run/altgrad/", self.run + "/")
        text = text.replace("/var/lib/altgrad/", self.state + "/")
        # No HTTP: a test daemon must not race others (or anything else on
        # the machine) for the example's port 8787.
        text, n = re.subn(r"(?m)^http\s*=.*$", "http = off", text)
        if n == 0:
            text += "\nhttp = off\n"
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(self.etc, 0o755)
        os.chmod(self.config, 0o644)
        self.ingest_sock = os.path.join(self.run, "ingest.sock")
        self.query_sock = os.path.join(self.run, "query.sock")
        self.db = os.path.join(self.state, "altgrad.db")

    def chown(self, uid, gid):
        for d in (self.run, self.state, self.cwd):
            os.chown(d, uid, gid)

    def cleanup(self):
        subprocess.run(["rm", "-rf", self.root], check=False)


class Notify:
    """The $NOTIFY_SOCKET end: a datagram socket that records who sent what."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        os.chmod(path, 0o777)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.messages = []  # (pid, {key: value})

    def recv(self, timeout):
        self.sock.settimeout(max(timeout, 0.01))
        try:
            data, anc, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except socket.timeout:
            return None
        pid = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, _, _ = struct.unpack("iII", payload[:12])
        fields = {}
        for line in data.decode("utf-8", "replace").split("\n"):
            if "=" in line:
                k, _, v = line.partition("=")
                fields[k] = v
        self.messages.append((pid, fields))
        print("     notify from pid %s: %s" % (pid, data.decode("utf-8", "replace").strip().replace("\n", " | ")), flush=True)
        return pid, fields

    def wait_for(self, key, value, proc, what):
        """The next message carrying key=value (others are kept in the log);
        fails if the daemon exits or nothing comes within DEADLINE_S."""
        end = time.monotonic() + DEADLINE_S
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise TestFailure("%s: daemon exited with %s first" % (what, proc.returncode))
            got = self.recv(min(1.0, end - time.monotonic()))
            if got and got[1].get(key) == value:
                return got
        raise TestFailure("%s: no %s=%s within %.0f s" % (what, key, value, DEADLINE_S))

    def close(self):
        self.sock.close()


def socket_mode(path):
    st = os.stat(path)
    check(stat.S_ISSOCK(st.st_mode), "%s is a socket" % os.path.basename(path))
    return stat.S_IMODE(st.st_mode)


def lifecycle(proc, notify, work, main_pid=None, cli=None, cli_env=None, trainer=None):
    """READY, sockets, watchdog, reload, stop. main_pid None: learn the
    daemon's pid from READY=1 (it may sit below a sandbox launcher).
    trainer: called with work while the daemon serves, before the reload."""
    pid, _ = notify.wait_for("READY", "1", proc, "start")
    if main_pid is not None:
        check(pid == main_pid, "READY=1 comes from the main process (NotifyAccess=main)")
    daemon_pid = pid
    check(os.path.exists(work.ingest_sock), "ingest socket exists after READY=1")
    check(os.path.exists(work.query_sock), "query socket exists after READY=1")
    shm_sock = work.ingest_sock + ".shm"  # the descriptor socket (proto/shm.h)
    check(os.path.exists(shm_sock), "descriptor socket exists beside the ingest socket")
    for s in (work.ingest_sock, work.query_sock, shm_sock):
        mode = socket_mode(s)
        check(mode & 0o660 == 0o660 and mode & 0o007 == 0,
              "%s mode %04o: owner and group read/write, others nothing"
              % (os.path.basename(s), mode))
    check(os.path.exists(work.db), "database created in the StateDirectory stand-in")

    for n in (1, 2):
        notify.wait_for("WATCHDOG", "1", proc, "watchdog ping %d" % n)
    check(True, "two WATCHDOG=1 pings with WATCHDOG_USEC=%d" % WATCHDOG_USEC)

    if cli:
        out = subprocess.run([cli, "--query", "ipc://" + work.query_sock, "status"],
                             capture_output=True, text=True, timeout=DEADLINE_S, env=cli_env)
        sys.stdout.write(out.stdout)
        sys.stderr.write(out.stderr)
        check(out.returncode == 0, "altgrad status answers over the query socket")
    if trainer:
        trainer(work)

    os.kill(daemon_pid, signal.SIGHUP)
    notify.wait_for("RELOADING", "1", proc, "SIGHUP")
    check(True, "RELOADING=1 on SIGHUP")
    notify.wait_for("READY", "1", proc, "reload")
    check(True, "READY=1 again after the reload")
    notify.wait_for("WATCHDOG", "1", proc, "watchdog after reload")
    check(True, "watchdog pings go on after the reload")

    os.kill(daemon_pid, signal.SIGTERM)
    notify.wait_for("STOPPING", "1", proc, "SIGTERM")
    check(True, "STOPPING=1 on SIGTERM")
    try:
        rc = proc.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        raise TestFailure("daemon still running %.0f s after SIGTERM" % DEADLINE_S)
    check(rc == 0, "daemon exits 0 after SIGTERM (got %s)" % rc)
    check(not os.path.exists(shm_sock), "descriptor socket removed at exit")
    check(os.listdir(work.cwd) == [], "nothing written to the working directory")


def main_guard(fn):
    """Run fn(); map failures to exit 1, skips to SKIP, always clean up."""
    try:
        rc = fn()
    except TestFailure as e:
        print("FAIL " + str(e), flush=True)
        rc = 1
    sys.exit(rc)
