"""test_unit_sandbox.py - altgradd lives inside its unit's sandbox.

Without a running systemd (no systemd-run here), the unit's hardening is
applied for real by other means: setpriv for User=/Group=/NoNewPrivileges=,
bubblewrap for the file system view, namespaces and capabilities, and a
seccomp filter built with libseccomp from the unit's SystemCallFilter=,
RestrictAddressFamilies= and MemoryDenyWriteExecute= (expanded through
`systemd-analyze syscall-filter`). Then the same lifecycle as
test_unit_notify.py must pass. Exits 77 (SKIPPED) where the machine lacks
the means, saying which.

The service user must reach the daemon binary, which may sit in a private
clone (a folder of mode 0700 somewhere above the build tree): the binary, and
any library it loads from a folder the service user cannot read, are copied
into a fresh folder under a temporary directory every user can traverse, and
the sandbox runs that copy.
Usage: test_unit_sandbox.py UNIT EXAMPLE_CONFIG DAEMON [CLI]
"""
import ctypes
import ctypes.util
import errno
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unitrun  # noqa: E402

SANDBOX_UID = 61234  # an id no account uses; stands in for User=altgrad

# Settings this emulation applies, and how; anything else hardening-related
# in the unit is printed as not emulated.
EMULATED = {
    "User": "setpriv --reuid", "Group": "setpriv --regid", "NoNewPrivileges": "setpriv",
    "CapabilityBoundingSet": "bwrap --cap-drop ALL", "AmbientCapabilities": "bwrap --cap-drop ALL",
    "ProtectSystem": "read-only / bind", "ProtectHome": "tmpfs /home /root /run/user",
    "PrivateTmp": "tmpfs /tmp /var/tmp", "PrivateDevices": "bwrap --dev",
    "PrivateUsers": "user namespace", "PrivateMounts": "mount namespace",
    "ProtectProc": "pid namespace + fresh /proc", "ProcSubset": "pid namespace + fresh /proc",
    "ProtectKernelTunables": "fresh /proc, no privileges",
    "ProtectHostname": "uts namespace", "ProtectControlGroups": "cgroup namespace",
    "RemoveIPC": "ipc namespace", "UMask": "umask",
    "SystemCallFilter": "seccomp", "SystemCallErrorNumber": "seccomp",
    "SystemCallArchitectures": "seccomp (native only)",
    "RestrictAddressFamilies": "seccomp on socket()",
    "MemoryDenyWriteExecute": "seccomp on mmap/mprotect",
    "RuntimeDirectory": "writable bind", "StateDirectory": "writable bind",
    "ConfigurationDirectory": "read-only bind",
}
HARDENING_PREFIXES = ("Protect", "Private", "Restrict", "Lock", "Memory", "SystemCall",
                      "Capability", "Ambient", "NoNew", "Remove", "Keyring", "Device",
                      "IPAddress", "UMask", "ProcSubset")

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
PROT_WRITE, PROT_EXEC = 0x2, 0x4


class ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


def syscall_groups():
    """{'@group': [members]} from systemd-analyze, nested groups unexpanded."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                         text=True, check=True).stdout
    groups, cur = {}, None
    for line in out.splitlines():
        if line.startswith("@"):
            cur = line.strip()
            groups[cur] = []
        elif cur and line.strip() and not line.strip().startswith("#"):
            groups[cur].append(line.strip())
        elif not line.strip():
            cur = None
    return groups


def expand(names, groups, seen=None):
    seen = set() if seen is None else seen
    result = set()
    for n in names:
        if n.startswith("@"):
            if n in seen:
                continue
            seen.add(n)
            if n not in groups:
                raise unitrun.TestFailure("unknown syscall group %s" % n)
            result |= expand(groups[n], groups, seen)
        else:
            result.add(n)
    return result


def allowed_syscalls(settings):
    """The allow list systemd derives from the unit's SystemCallFilter= lines."""
    groups = syscall_groups()
    allow = None
    for value in settings.get("SystemCallFilter", []):
        deny = value.startswith("~")
        names = expand(value.lstrip("~").split(), groups)
        if allow is None:
            if deny:
                raise unitrun.TestFailure("deny-list-only SystemCallFilter is not emulated")
            allow = set()
        allow = allow - names if deny else allow | names
    return allow


def address_families(settings):
    fams = []
    for value in settings.get("RestrictAddressFamilies", []):
        for name in value.split():
            fams.append(getattr(socket, name))
    return fams


def build_seccomp(settings, path):
    """Write the unit's seccomp program (BPF) to path; return what it covers."""
    libname = ctypes.util.find_library("seccomp")
    if not libname:
        return None
    lib = ctypes.CDLL(libname, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int,
                                           ctypes.c_uint, ctypes.POINTER(ArgCmp)]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]

    err_name = unitrun.unit_value(settings, "SystemCallErrorNumber", "EPERM")
    default = 0x00050000 | (getattr(errno, err_name) & 0xFFFF)  # SCMP_ACT_ERRNO
    ctx = lib.seccomp_init(default)
    if not ctx:
        raise unitrun.TestFailure("seccomp_init failed")
    allow = allowed_syscalls(settings)
    conditional = {}
    fams = address_families(settings)
    if fams:
        conditional["socket"] = [[ArgCmp(0, SCMP_CMP_EQ, f, 0)] for f in fams]
    if unitrun.unit_value(settings, "MemoryDenyWriteExecute") == "yes":
        wx = PROT_WRITE | PROT_EXEC
        ok = [[ArgCmp(2, SCMP_CMP_MASKED_EQ, wx, v)] for v in (0, PROT_WRITE, PROT_EXEC)]
        for name in ("mmap", "mprotect", "pkey_mprotect"):
            conditional[name] = ok
    try:
        for name in sorted(allow):
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0 or name in conditional:
                continue
            if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, 0, None) != 0:
                raise unitrun.TestFailure("seccomp rule for %s failed" % name)
        for name, alternatives in conditional.items():
            if name not in allow:
                continue
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:
                continue
            for conds in alternatives:
                arr = (ArgCmp * len(conds))(*conds)
                if lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, nr, len(conds), arr) != 0:
                    raise unitrun.TestFailure("seccomp rule for %s failed" % name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if lib.seccomp_export_bpf(ctx, fd) != 0:
                raise unitrun.TestFailure("seccomp_export_bpf failed")
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)
    return "%d system calls allowed, socket() limited to %s%s" % (
        len(allow), ",".join(v for v in settings.get("RestrictAddressFamilies", [])),
        ", no writable+executable memory" if "mmap" in conditional else "")


def sanitized(binary):
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    return "libasan" in out.stdout


def why_not():
    """None if the sandbox can be built here, else the reason."""
    if os.geteuid() != 0:
        return "needs root to switch to the service user (setpriv)"
    for tool in ("bwrap", "setpriv", "systemd-analyze"):
        if not shutil.which(tool):
            return "%s is not installed (apt-get install %s)" % (
                tool, {"bwrap": "bubblewrap", "setpriv": "util-linux"}.get(tool, "systemd"))
    if not ctypes.util.find_library("seccomp"):
        return "libseccomp is not installed"
    try:
        pwd.getpwuid(SANDBOX_UID)
        return "uid %d is taken on this machine" % SANDBOX_UID
    except KeyError:
        pass
    probe = subprocess.run(
        ["setpriv", "--reuid=%d" % SANDBOX_UID, "--regid=%d" % SANDBOX_UID, "--clear-groups",
         "--no-new-privs", "--", "bwrap", "--unshare-user", "--unshare-pid", "--ro-bind", "/", "/",
         "--proc", "/proc", "--dev", "/dev", "--cap-drop", "ALL", "--", "true"],
        capture_output=True, text=True)
    if probe.returncode != 0:
        return "bubblewrap cannot create namespaces here: " + probe.stderr.strip()
    return None


def world_reachable(path):
    """True when any user can reach path: every folder from / down to it is
    searchable by others (o+x), and a file is readable by others (o+r)."""
    path = os.path.realpath(path)
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode) and not st.st_mode & stat.S_IROTH:
        return False
    d = path if stat.S_ISDIR(st.st_mode) else os.path.dirname(path)
    while True:
        if not os.stat(d).st_mode & stat.S_IXOTH:
            return False
        if d == "/":
            return True
        d = os.path.dirname(d)


def reachable_tmp_base():
    """A temporary directory the service user can traverse, or None."""
    for cand in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        if os.path.isdir(cand) and world_reachable(cand):
            return cand
    return None


def loaded_libraries(binary):
    """The shared libraries the dynamic loader resolves for binary (ldd)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    libs = []
    for line in out.stdout.splitlines():
        target = line.split("=>", 1)[1] if "=>" in line else line
        path = target.strip().split(" (", 1)[0].strip()
        if path.startswith("/") and os.path.isfile(path):
            libs.append(path)
    return libs


class StagedDaemon:
    """The daemon binary copied into a fresh 0755 folder under base, with the
    libraries it loads from places the service user cannot reach copied into
    its lib/ (then named by LD_LIBRARY_PATH inside the sandbox)."""

    def __init__(self, daemon, base):
        self.root = tempfile.mkdtemp(prefix="altgrad-sandbox-bin-", dir=base)
        os.chmod(self.root, 0o755)
        self.binary = os.path.join(self.root, "altgradd")
        shutil.copy2(daemon, self.binary)
        os.chmod(self.binary, 0o755)
        self.libdir = None
        for lib in loaded_libraries(daemon):
            if world_reachable(lib):
                continue
            if self.libdir is None:
                self.libdir = os.path.join(self.root, "lib")
                os.mkdir(self.libdir, 0o755)
            copy = os.path.join(self.libdir, os.path.basename(lib))
            shutil.copy2(lib, copy)
            os.chmod(copy, 0o755)
            print("     copied %s for the service user" % lib, flush=True)

    def cleanup(self):
        shutil.rmtree(self.root, ignore_errors=True)


PROBE = r"""
import ctypes, mmap, os, socket, sys
bad = []
if os.getuid() != %(uid)d: bad.append("uid %%d" %% os.getuid())
caps = [l for l in open("/proc/self/status") if l.startswith(("CapEff", "CapBnd"))]
if any(int(l.split()[1], 16) for l in caps): bad.append("capabilities left: " + " ".join(caps))
for path in ("/etc/altgrad-probe", "%(etc)s/probe", "/usr/altgrad-probe"):
    try:
        open(path, "w"); bad.append("wrote " + path)
    except OSError: pass
try:
    socket.socket(socket.AF_NETLINK, socket.SOCK_RAW); bad.append("AF_NETLINK socket allowed")
except OSError: pass
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
if libc.mmap(None, 4096, 7, 0x22, -1, 0) not in (None, ctypes.c_void_p(-1).value):
    bad.append("writable+executable mmap allowed")
if libc.syscall(165, b"none", b"/mnt", b"tmpfs", 0, None) == 0: bad.append("mount allowed")
if len([d for d in os.listdir("/proc") if d.isdigit()]) > 3: bad.append("host processes visible")
open("%(run)s/probe", "w").close(); os.unlink("%(run)s/probe")
print("\n".join(bad)); sys.exit(1 if bad else 0)
"""


def sandbox_prefix(work, staged, bpf_fd):
    """setpriv + bwrap + seccomp command prefix that mirrors the unit."""
    cmd = ["setpriv", "--reuid=%d" % SANDBOX_UID, "--regid=%d" % SANDBOX_UID,
           "--clear-groups", "--no-new-privs", "--",
           "bwrap", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
           "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
           "--die-with-parent", "--new-session",
           "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
           "--tmpfs", "/tmp", "--tmpfs", "/var/tmp"]
    for home in ("/home", "/root", "/run/user"):
        if os.path.isdir(home):
            cmd += ["--tmpfs", home]
    # PrivateTmp hid the work tree (it lives in /tmp); bring back what the
    # unit grants: runtime and state writable, config read-only.
    cmd += ["--ro-bind", work.root, work.root,
            "--bind", work.run, work.run, "--bind", work.state, work.state,
            "--bind", work.cwd, work.cwd, "--ro-bind", work.etc, work.etc]
    # The staged daemon sits in a temporary folder the tmpfs mounts above
    # may hide: bring it back, read-only.
    cmd += ["--ro-bind", staged.root, staged.root]
    if staged.libdir:
        cmd += ["--setenv", "LD_LIBRARY_PATH", staged.libdir]
    return cmd + ["--chdir", work.cwd, "--cap-drop", "ALL", "--seccomp", str(bpf_fd), "--"]


def probe_sandbox(prefix, work, bpf_fd):
    """The sandbox must really deny: run a probe inside it first."""
    code = PROBE % {"uid": SANDBOX_UID, "etc": work.etc, "run": work.run}
    os.lseek(bpf_fd, 0, os.SEEK_SET)
    out = subprocess.run(prefix + ["/usr/bin/python3", "-c", code], capture_output=True,
                         text=True, pass_fds=(bpf_fd,), timeout=unitrun.DEADLINE_S)
    sys.stdout.write(out.stdout)
    sys.stderr.write(out.stderr)
    unitrun.check(out.returncode == 0,
                  "inside the sandbox: service uid, no capabilities, read-only system and "
                  "config, no AF_NETLINK, no W+X memory, no mount; runtime dir writable")
    os.lseek(bpf_fd, 0, os.SEEK_SET)


# A trainer of another user than the service's (this test's, as the
# service's trainers are): its snapshots go through its shared-memory
# segment, passed over the descriptor socket into the sandbox.
TRAINER = r'''
import json, sys
import numpy as np
import altgrad
c = altgrad.Client(sys.argv[1], sys.argv[2], "unit-shm", policy="block")
n = 4096
w = (np.arange(n, dtype=np.float32) % 97 - 48) * np.float32(0.01)
g = (np.arange(n, dtype=np.float32) % 13 - 6) * np.float32(1e-4)
for step in range(1, 6):
    c.log_sgd(step, "layer.weight", w, g, 0.01)
    c.flush(10000)
print(json.dumps(c.stats()))
c.close()
'''


def shm_trainer(daemon):
    """The trainer above against work's sockets: every snapshot after the
    first (which may be taken before the connection is up) through shared
    memory. Skipped, saying so, for a sanitized build (Python cannot load
    its library) or without the Python package."""
    src, build = os.environ.get("AG_SOURCE_DIR"), os.environ.get("AG_BUILD_DIR")
    lib = os.path.join(build or "", "libaltgrad.so")
    if sanitized(daemon) or not src or not os.path.exists(lib):
        print("     trainer through shared memory: not run (sanitized build or no library)")
        return None

    def trainer(work):
        env = dict(os.environ, PYTHONPATH=os.path.join(src, "python"), ALTGRAD_LIBRARY=lib)
        out = subprocess.run([sys.executable, "-c", TRAINER, "ipc://" + work.ingest_sock,
                              "ipc://" + work.query_sock], capture_output=True, text=True,
                             timeout=unitrun.DEADLINE_S, env=env)
        sys.stderr.write(out.stderr)
        unitrun.check(out.returncode == 0, "a trainer of another user logs 5 snapshots")
        st = json.loads(out.stdout.strip().splitlines()[-1])
        unitrun.check(st["snapshots"] == 5 and st["shm_snapshots"] >= 4,
                      "its snapshots go through shared memory into the sandbox (%d of %d)"
                      % (st["shm_snapshots"], st["snapshots"]))
    return trainer


def run():
    if len(sys.argv) < 4:
        print("usage: test_unit_sandbox.py UNIT EXAMPLE_CONFIG DAEMON [CLI]")
        return 2
    unit, example, daemon = sys.argv[1:4]
    cli = sys.argv[4] if len(sys.argv) > 4 and os.access(sys.argv[4], os.X_OK) else None
    if not os.access(daemon, os.X_OK):
        print("SKIP altgradd not built: %s" % daemon)
        return unitrun.SKIP
    if shutil.which("systemd-run") and os.path.isdir("/run/systemd/system"):
        print("note: systemd is running here; this test still uses the emulation")
    reason = why_not()
    if reason:
        print("SKIP the unit's sandbox cannot be applied: " + reason)
        return unitrun.SKIP
    settings = unitrun.parse_unit(unit)
    for key in sorted(settings):
        if key.startswith(HARDENING_PREFIXES):
            how = EMULATED.get(key)
            print("     %-24s %s" % (key, how if how else "NOT emulated (needs systemd)"))

    base = reachable_tmp_base()
    if base is None:
        print("SKIP no temporary directory the service user can traverse (every folder "
              "above it must be o+x): tried $TMPDIR, /tmp and /var/tmp")
        return unitrun.SKIP
    work = unitrun.Workdir(example, base=base)
    work.chown(SANDBOX_UID, SANDBOX_UID)
    bpf = tempfile.NamedTemporaryFile(prefix="altgrad-seccomp-", delete=False)
    bpf.close()
    notify = proc = staged = None
    try:
        staged = StagedDaemon(daemon, base)
        print("     daemon copied to %s (the service user cannot rely on reaching the "
              "build tree)" % staged.binary, flush=True)
        covered = build_seccomp(settings, bpf.name)
        unitrun.check(covered is not None, "seccomp filter built: %s" % covered)
        notify = unitrun.Notify(os.path.join(work.root, "notify.sock"))
        argv = unitrun.exec_argv(settings, staged.binary, work.config)
        bpf_fd = os.open(bpf.name, os.O_RDONLY)
        prefix = sandbox_prefix(work, staged, bpf_fd)
        probe_sandbox(prefix, work, bpf_fd)
        cmd = prefix + argv
        env = dict(os.environ)
        env.update(unitrun.unit_environment(settings))
        env["NOTIFY_SOCKET"] = notify.path
        env["WATCHDOG_USEC"] = str(unitrun.WATCHDOG_USEC)
        if sanitized(daemon):
            # LeakSanitizer stops the process with ptrace(), which the unit's
            # filter (rightly) forbids; test_unit_notify.py checks for leaks.
            env["ASAN_OPTIONS"] = (env.get("ASAN_OPTIONS", "") + ":detect_leaks=0").lstrip(":")
            print("     sanitized daemon: leak detection off inside the sandbox", flush=True)
        umask = unitrun.unit_umask(settings)
        print("     exec: %s" % " ".join(cmd), flush=True)
        proc = subprocess.Popen(cmd, env=env, preexec_fn=lambda: os.umask(umask),
                                pass_fds=(bpf_fd,))
        os.close(bpf_fd)
        unitrun.lifecycle(proc, notify, work, main_pid=None, cli=cli,
                          trainer=shm_trainer(daemon))
        return 0
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        if notify:
            notify.close()
        os.unlink(bpf.name)
        if staged:
            staged.cleanup()
        work.cleanup()


if __name__ == "__main__":
    unitrun.main_guard(run)
