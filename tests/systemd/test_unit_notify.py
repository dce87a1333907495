"""test_unit_notify.py - altgradd runs under its unit's ExecStart and speaks
sd_notify: READY=1, WATCHDOG=1 at half of $WATCHDOG_USEC, RELOADING=1 and
READY=1 around a SIGHUP reload, STOPPING=1 on SIGTERM, exit status 0.
Usage: test_unit_notify.py UNIT EXAMPLE_CONFIG DAEMON [CLI]
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import unitrun  # noqa: E402


def run():
    if len(sys.argv) < 4:
        print("usage: test_unit_notify.py UNIT EXAMPLE_CONFIG DAEMON [CLI]")
        return 2
    unit, example, daemon = sys.argv[1:4]
    cli = sys.argv[4] if len(sys.argv) > 4 and os.access(sys.argv[4], os.X_OK) else None
    if not os.access(daemon, os.X_OK):
        print("SKIP altgradd not built: %s" % daemon)
        return unitrun.SKIP
    settings = unitrun.parse_unit(unit)
    unitrun.check(unitrun.unit_value(settings, "Type") == "notify", "unit is Type=notify")
    unitrun.check(bool(unitrun.unit_value(settings, "WatchdogSec")), "unit sets WatchdogSec")
    work = unitrun.Workdir(example)
    notify = None
    proc = None
    try:
        notify = unitrun.Notify(os.path.join(work.root, "notify.sock"))
        argv = unitrun.exec_argv(settings, daemon, work.config)
        env = dict(os.environ)
        env.update(unitrun.unit_environment(settings))
        env["NOTIFY_SOCKET"] = notify.path
        env["WATCHDOG_USEC"] = str(unitrun.WATCHDOG_USEC)
        # systemd sets WATCHDOG_PID to the main pid; $$ of the shell that
        # execs the daemon is that pid.
        wrapped = ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh"] + argv
        umask = unitrun.unit_umask(settings)
        print("     exec: %s (umask %04o)" % (" ".join(argv), umask), flush=True)
        proc = subprocess.Popen(wrapped, cwd=work.cwd, env=env,
                                preexec_fn=lambda: os.umask(umask))
        unitrun.lifecycle(proc, notify, work, main_pid=proc.pid, cli=cli)
        return 0
    finally:
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()
        if notify:
            notify.close()
        work.cleanup()


if __name__ == "__main__":
    unitrun.main_guard(run)
