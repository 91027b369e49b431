"""python-daemon compatibility: ``import daemonkit as daemon`` runs the same program.

Side-by-side tests write one program text and run it twice, swapping only
the import line: once with python-daemon (``import daemon``) and once with
daemonkit (``import daemonkit as daemon``). Each run is started under the
subreaper guard of test_validation, which becomes the daemon's parent and so
can report the daemon's real exit status.

Daemon scripts wait in 0.05 s sleeps, never one long ``time.sleep(30)``:
CPython runs a Python signal handler between bytecodes, so a SIGTERM that
lands just before a long sleep starts is only handled when the sleep ends.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import signal
import sys
from typing import Any

import pytest
from conftest import TESTS_DIR, Daemons, is_alive, stop
from test_validation import start_guarded

import daemonkit

IMPORTS = {"daemon": "import daemon", "daemonkit": "import daemonkit as daemon"}

PROGRAM_PRELUDE = f"""\
import json, os, signal, sys, time
IMPORT_LINE
sys.path.insert(0, {str(TESTS_DIR)!r})
import facts

REPORT, WORK = sys.argv[1], sys.argv[2]
"""


def need_python_daemon() -> None:
    pytest.importorskip("daemon", reason="python-daemon is not installed")


def program(body: str, library: str) -> str:
    return PROGRAM_PRELUDE.replace("IMPORT_LINE", IMPORTS[library]) + body


class Run:
    """One program run under one library: the daemon's report and its fate."""

    def __init__(self, daemons: Daemons, body: str, library: str, *, linger: float) -> None:
        self.daemons = daemons
        # Not named after the library: the script's folder is on sys.path.
        self.work = daemons.tmp_path / f"work-{library}"
        self.work.mkdir()
        script = daemons.tmp_path / f"program_{library}.py"
        script.write_text(program(body, library))
        self.report = self.work / "report.json"
        self.guard = start_guarded(
            daemons, [sys.executable, str(script), str(self.report), str(self.work)], linger=linger
        )

    def facts(self) -> dict[str, Any]:
        return self.daemons.read_report(self.report)

    def exit_status(self, pid: int) -> int:
        """Wait for the guard; return the daemon's exit code (-N: killed by N)."""
        result = self.guard.finish(timeout=20)
        assert pid in result.statuses, result
        assert pid not in result.killed, "the daemon had to be killed"
        return os.waitstatus_to_exitcode(result.statuses[pid])


# -- the same program, unchanged ---------------------------------------------

FULL_PROGRAM = """\
keep = open(os.path.join(WORK, "keep.txt"), "w")
log = open(os.path.join(WORK, "out.log"), "a")


def handler(signum, frame):
    print("handler got signal", signum)
    sys.stdout.flush()
    raise SystemExit(7)


context = daemon.DaemonContext(
    working_directory=WORK,
    umask=0o027,
    files_preserve=[keep],
    stdout=log,
    stderr=log,
    signal_map={
        signal.SIGTERM: handler,
        signal.SIGHUP: "terminate",
        signal.SIGUSR1: None,
    },
)
with context:
    print("hello from the daemon")
    sys.stdout.flush()
    keep.write("written by the daemon\\n")
    keep.flush()
    facts.report(REPORT, keep_fd=keep.fileno(), log_fd=log.fileno(), is_open=context.is_open)
    while True:
        time.sleep(0.05)
"""


def run_full_program(daemons: Daemons, library: str) -> dict[str, Any]:
    run = Run(daemons, FULL_PROGRAM, library, linger=20)
    data = run.facts()
    pid = data["pid"]
    # SIGUSR1 is ignored, so the SIGTERM handler gets to run (signals pending
    # together are taken lowest number first: a fatal SIGUSR1 would win).
    os.kill(pid, signal.SIGUSR1)
    os.kill(pid, signal.SIGTERM)
    data["exit"] = run.exit_status(pid)
    data["out_log"] = (run.work / "out.log").read_text()
    data["keep_txt"] = (run.work / "keep.txt").read_text()
    data["work"] = str(run.work)
    return data


def test_same_program_same_facts(daemons: Daemons) -> None:
    need_python_daemon()
    theirs = run_full_program(daemons, "daemon")
    ours = run_full_program(daemons, "daemonkit")
    for data in (theirs, ours):
        work = data["work"]
        assert data["cwd"] == work
        assert data["umask"] == 0o027
        assert data["is_open"] is True
        # Detached: own session, not its leader, no controlling terminal.
        assert data["sid"] != data["pid"]
        assert data["tty_errno_name"] == "ENXIO"
        # The preserved file is still open in the daemon, and was written.
        assert data["fds"][str(data["keep_fd"])] == os.path.join(work, "keep.txt")
        assert data["keep_txt"] == "written by the daemon\n"
        assert data["fds"]["0"] == "/dev/null"
        assert data["fds"]["1"] == data["fds"]["2"] == os.path.join(work, "out.log")
        assert data["out_log"] == "hello from the daemon\nhandler got signal 15\n"
        assert data["signals"]["SIGTERM"] == "handler"
        assert data["signals"]["SIGUSR1"] == "ignore"
        assert data["exit"] == 7
        assert data["core_limit"] == [0, 0]
    # daemonkit reopens the log file on SIGHUP, then runs the map's handler.
    assert theirs["signals"]["SIGHUP"] == "terminate"
    assert ours["signals"]["SIGHUP"] == "reopen+terminate"
    # And, side by side, they agree.
    ours["signals"]["SIGHUP"] = "terminate"
    for key in ("umask", "signals", "out_log", "keep_txt", "exit", "tty_errno_name", "groups"):
        assert theirs[key] == ours[key], key


DEFAULTS_PROGRAM = """\
with daemon.DaemonContext(working_directory=WORK):
    facts.report(REPORT)
    while True:
        time.sleep(0.05)
"""


def run_defaults_program(daemons: Daemons, library: str) -> dict[str, Any]:
    run = Run(daemons, DEFAULTS_PROGRAM, library, linger=20)
    data = run.facts()
    os.kill(data["pid"], signal.SIGTERM)
    data["exit"] = run.exit_status(data["pid"])
    return data


def test_documented_differences_umask_and_sigterm_status(daemons: Daemons) -> None:
    """Default umask 0o022 (not 0) and SIGTERM exits 0 (not 1); the rest agrees."""
    need_python_daemon()
    theirs = run_defaults_program(daemons, "daemon")
    ours = run_defaults_program(daemons, "daemonkit")
    assert theirs["umask"] == 0
    assert ours["umask"] == 0o022
    assert theirs["exit"] == 1  # SystemExit("Terminating on signal 15")
    assert ours["exit"] == 0  # a requested, clean shutdown
    # The default signal map is the same, except that daemonkit catches
    # SIGHUP to reopen log files (it does not kill the daemon).
    assert theirs["signals"]["SIGHUP"] == "default"
    assert ours["signals"]["SIGHUP"] == "reopen"
    assert theirs["signals"] == {**ours["signals"], "SIGHUP": "default"}
    assert ours["signals"]["SIGTERM"] == "terminate"
    for name in ("SIGTSTP", "SIGTTIN", "SIGTTOU"):
        assert ours["signals"][name] == "ignore"


def test_sigterm_status_without_python_daemon(daemons: Daemons) -> None:
    """daemonkit's half of the difference, where python-daemon is missing."""
    ours = run_defaults_program(daemons, "daemonkit")
    assert ours["umask"] == 0o022
    assert ours["exit"] == 0


FAILING_START_PROGRAM = """\
class FailingPidfile:
    def __enter__(self):
        raise RuntimeError("boom: pidfile busy")

    def __exit__(self, *exc_info):
        return None


with daemon.DaemonContext(working_directory=WORK, pidfile=FailingPidfile()):
    facts.report(REPORT)
    for _ in range(600): time.sleep(0.05)
"""


def test_documented_difference_launcher_waits(daemons: Daemons) -> None:
    """python-daemon's launcher exits 0 at once, even if the daemon then fails;
    daemonkit's launcher waits and reports the failure."""
    need_python_daemon()
    results = {}
    for library in ("daemon", "daemonkit"):
        run = Run(daemons, FAILING_START_PROGRAM, library, linger=10)
        results[library] = run.guard.finish(timeout=20)
        assert not run.report.exists()
        assert results[library].killed == []  # every daemon ended by itself
    theirs, ours = results["daemon"], results["daemonkit"]
    assert theirs.returncode == 0
    assert "boom" not in theirs.stderr
    assert ours.returncode == 1
    assert "RuntimeError: boom: pidfile busy" in ours.stderr
    assert "Traceback" in ours.stderr


# -- the constructor -------------------------------------------------------------

# python-daemon 3.1.2's DaemonContext.__init__, in order, with defaults.
PYTHON_DAEMON_PARAMETERS = [
    ("chroot_directory", None),
    ("working_directory", "/"),
    ("umask", 0),
    ("uid", None),
    ("gid", None),
    ("initgroups", False),
    ("prevent_core", True),
    ("detach_process", None),
    ("files_preserve", None),
    ("pidfile", None),
    ("stdin", None),
    ("stdout", None),
    ("stderr", None),
    ("signal_map", None),
]


def test_reference_signature_is_python_daemons() -> None:
    daemon = pytest.importorskip("daemon", reason="python-daemon is not installed")
    parameters = list(inspect.signature(daemon.DaemonContext).parameters.values())
    assert [(p.name, p.default) for p in parameters] == PYTHON_DAEMON_PARAMETERS


def test_constructor_accepts_every_python_daemon_keyword() -> None:
    parameters = inspect.signature(daemonkit.DaemonContext).parameters
    names = list(parameters)
    theirs = [name for name, _ in PYTHON_DAEMON_PARAMETERS]
    # Same names, same order (so even positional calls keep working) ...
    assert names[: len(theirs)] == theirs
    for name, default in PYTHON_DAEMON_PARAMETERS:
        parameter = parameters[name]
        assert parameter.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
        # ... and the same defaults, except the umask on purpose.
        expected = 0o022 if name == "umask" else default
        assert parameter.default == expected, name
    # daemonkit's own options are keyword-only and optional.
    for name in names[len(theirs) :]:
        assert parameters[name].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert parameters[name].default is not inspect.Parameter.empty, name


def test_constructor_sets_every_attribute() -> None:
    values: dict[str, Any] = {
        "chroot_directory": "/srv/jail",
        "working_directory": "/srv",
        "umask": 0o077,
        "uid": 1234,
        "gid": "staff",
        "initgroups": True,
        "prevent_core": False,
        "detach_process": True,
        "files_preserve": [3],
        "pidfile": object(),
        "stdin": None,
        "stdout": sys.stdout,
        "stderr": sys.stderr,
        "signal_map": {signal.SIGHUP: None},
    }
    context = daemonkit.DaemonContext(**values)
    for name, value in values.items():
        assert getattr(context, name) == value, name
    assert context.is_open is False


def test_default_signal_map_attribute() -> None:
    """As python-daemon: the map attribute holds the default map when none is given."""
    context = daemonkit.DaemonContext()
    assert context.signal_map[signal.SIGTERM] == "terminate"
    for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        assert context.signal_map[sig] is None


@pytest.mark.parametrize("library", ["daemon", "daemonkit"])
def test_attributes_set_before_open_are_used(daemons: Daemons, library: str) -> None:
    if library == "daemon":
        need_python_daemon()
    body = """\
log = open(os.path.join(WORK, "out.log"), "a")
keep = open(os.path.join(WORK, "keep.txt"), "w")
context = daemon.DaemonContext()
context.working_directory = WORK
context.umask = 0o077
context.stdout = log
context.files_preserve = [keep]
context.signal_map = {signal.SIGUSR2: None}
context.detach_process = True
with context:
    print("to the log")
    sys.stdout.flush()
    facts.report(REPORT, keep_fd=keep.fileno())
    for _ in range(600): time.sleep(0.05)
"""
    run = Run(daemons, body, library, linger=20)
    data = run.facts()
    assert data["cwd"] == str(run.work)
    assert data["umask"] == 0o077
    assert data["fds"][str(data["keep_fd"])] == str(run.work / "keep.txt")
    assert data["signals"]["SIGUSR2"] == "ignore"
    assert data["signals"]["SIGTERM"] == "default"  # the map was replaced
    assert data["sid"] != data["pid"]
    assert (run.work / "out.log").read_text() == "to the log\n"
    os.kill(data["pid"], signal.SIGKILL)
    assert run.exit_status(data["pid"]) == -signal.SIGKILL


RECORDING_PIDFILE = """\
class RecordingPidfile:
    def __init__(self, path):
        self.path = path

    def _record(self, event):
        with open(self.path, "a") as out:
            out.write(f"{event} {os.getpid()}\\n")

    def __enter__(self):
        self._record("enter")
        return self

    def __exit__(self, *exc_info):
        self._record("exit")
        return None


FORKS = []
os.register_at_fork(before=lambda: FORKS.append(1))
"""


@pytest.mark.parametrize("library", ["daemon", "daemonkit"])
def test_is_open_and_idempotent_open_close(daemons: Daemons, library: str) -> None:
    if library == "daemon":
        need_python_daemon()
    body = (
        RECORDING_PIDFILE
        + """\
context = daemon.DaemonContext(
    working_directory=WORK, pidfile=RecordingPidfile(os.path.join(WORK, "pidfile.log"))
)
before = context.is_open
context.open()
pid, forks = os.getpid(), len(FORKS)
inside = context.is_open
context.open()  # already open: nothing happens
again = {"pid": os.getpid(), "forks": len(FORKS), "is_open": context.is_open}
context.close()
after = context.is_open
context.close()  # already closed: nothing happens
facts.report(REPORT, before=before, inside=inside, again=again, forks=forks, after=after,
             after_second_close=context.is_open)
"""
    )
    run = Run(daemons, body, library, linger=10)
    data = run.facts()
    pid = data["pid"]
    assert run.exit_status(pid) == 0
    assert data["before"] is False
    assert data["inside"] is True
    assert data["again"] == {"pid": pid, "forks": data["forks"], "is_open": True}
    assert data["forks"] >= 1
    assert data["after"] is False
    assert data["after_second_close"] is False
    events = (run.work / "pidfile.log").read_text().splitlines()
    assert events == [f"enter {pid}", f"exit {pid}"]


def test_close_in_a_child_of_the_daemon_leaves_the_pidfile(daemons: Daemons) -> None:
    body = (
        RECORDING_PIDFILE
        + """\
context = daemon.DaemonContext(
    working_directory=WORK, pidfile=RecordingPidfile(os.path.join(WORK, "pidfile.log"))
)
with context:
    child = os.fork()
    if child == 0:
        context.close()
        with open(os.path.join(WORK, "child.txt"), "w") as out:
            out.write(f"{os.getpid()} {context.is_open}\\n")
    else:
        os.waitpid(child, 0)
        facts.report(REPORT, child=child)
        for _ in range(600): time.sleep(0.05)
# The child leaves the with block too (a second close) and exits normally,
# running its atexit hooks (a third).
"""
    )
    run = Run(daemons, body, "daemonkit", linger=20)
    data = run.facts()
    pid, child = data["pid"], data["child"]
    assert (run.work / "child.txt").read_text() == f"{child} False\n"
    assert is_alive(pid)  # the child's close() did not end the daemon
    assert stop(pid)
    assert run.exit_status(pid) == 0
    events = (run.work / "pidfile.log").read_text().splitlines()
    assert events == [f"enter {pid}", f"exit {pid}"]


# -- names -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["DaemonOSEnvironmentError", "DaemonProcessDetachError"])
def test_python_daemon_exception_names(name: str) -> None:
    cls = getattr(daemonkit, name)
    assert issubclass(cls, daemonkit.DaemonError)
    assert issubclass(cls, OSError)
    error = cls(13, "cannot do that")
    assert error.errno == 13
    assert error.strerror == "cannot do that"
    if importlib.util.find_spec("daemon") is not None:
        import daemon.daemon  # type: ignore[import-untyped]

        # python-daemon's classes of the same name are OSErrors too.
        assert issubclass(getattr(daemon.daemon, name), OSError)


def test_privilege_error_is_an_os_environment_error() -> None:
    assert issubclass(daemonkit.PrivilegeError, daemonkit.DaemonOSEnvironmentError)


@pytest.mark.parametrize(
    "name", [name for name in daemonkit.__all__ if name not in ("__version__", "notify")]
)
def test_public_objects_report_module_daemonkit(name: str) -> None:
    obj = getattr(daemonkit, name)
    assert obj.__module__ == "daemonkit"


def test_public_objects_in_a_fresh_interpreter() -> None:
    """``from daemonkit import X`` works and reports the public module, first touch."""
    import subprocess

    code = (
        "import daemonkit\n"
        "from daemonkit import DaemonContext, ready, AlreadyRunningError\n"
        "names = [n for n in daemonkit.__all__ if n not in ('__version__', 'notify')]\n"
        "bad = [n for n in names if getattr(daemonkit, n).__module__ != 'daemonkit']\n"
        "print(repr(bad), DaemonContext.__module__, ready.__module__,\n"
        "      AlreadyRunningError.__module__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "daemonkit", "daemonkit", "daemonkit"]
