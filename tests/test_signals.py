"""Signal dispositions of the daemon: PEP 3143's default map, custom maps in
every accepted spelling, handlers that really run, and bad maps that fail in
the launcher before anything is forked.

Dispositions are read both as Python sees them (``facts``) and as the kernel
has them (``SigIgn``/``SigCgt`` in ``/proc/PID/status``). To learn a daemon's
real exit status, which only its parent can, some tests start the launcher
under a small subreaper that adopts the daemon and reaps it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import Daemons, Supervised, daemon_facts, is_alive, stop


def kernel_dispositions(pid: int) -> tuple[set[int], set[int]]:
    """The signals ``pid`` ignores and catches, as the kernel has them."""
    masks: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("SigIgn", "SigCgt"):
                masks[name] = int(value, 16)

    def members(mask: int) -> set[int]:
        return {n for n in range(1, 65) if mask >> (n - 1) & 1}

    return members(masks["SigIgn"]), members(masks["SigCgt"])


def wait_for_text(path: Path, expected: str, timeout: float = 10.0) -> str:
    """Wait until ``path`` holds ``expected`` (or more); return its text."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.startswith(expected):
            return text
        time.sleep(0.01)
    return path.read_text() if path.exists() else ""


# The with body records how it ends: the SystemExit code, and that its
# finally block ran. Then SystemExit goes on, out of the with statement.
RECORDING_BODY = """
def record(suffix, text):
    with open(REPORT + suffix, "a") as marker:
        marker.write(text)

def on_signal(signum, frame):
    record(".handled", f"{{signum}}\\n")

signal.signal(signal.SIGUSR2, signal.SIG_IGN)
facts.report(REPORT + ".launcher")
with daemonkit.DaemonContext({kwargs}):
    try:
        try:
            facts.report(REPORT)
            for _ in range(300):
                time.sleep(0.1)
        except SystemExit as exc:
            record(".exit", repr(exc.code))
            raise
    finally:
        record(".finally", "ran")
"""


def test_default_dispositions(daemons: Daemons) -> None:
    launch, report = daemons.launch(
        """
        facts.report(REPORT + ".launcher")
        with daemonkit.DaemonContext():
            facts.report(REPORT)
            linger()
        """
    )
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    launcher = json.loads(Path(f"{report}.launcher").read_text())
    for name in ("SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGTERM"):
        assert launcher["signals"][name] == "default", "setup"
    assert data["signals"] == {
        **launcher["signals"],
        "SIGTSTP": "ignore",
        "SIGTTIN": "ignore",
        "SIGTTOU": "ignore",
        "SIGTERM": "terminate",
        "SIGHUP": "reopen",  # log files are reopened; SIGHUP does not kill
    }
    ignored, caught = kernel_dispositions(data["pid"])
    assert {signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU} <= ignored
    assert signal.SIGTERM in caught
    assert stop(data["pid"])


def test_sigterm_runs_finally_blocks_and_exits_zero(daemons: Daemons, tmp_path: Path) -> None:
    run = Supervised(daemons, tmp_path, RECORDING_BODY.format(kwargs=""))
    data = run.read_report()
    report = run.report

    assert data["signals"]["SIGTERM"] == "terminate"
    assert not Path(f"{report}.finally").exists()
    assert stop(data["pid"], signal.SIGTERM)
    statuses = run.statuses(data["pid"])

    assert Path(f"{report}.exit").read_text() == "0"
    assert Path(f"{report}.finally").read_text() == "ran"
    assert statuses == {"launcher": 0, str(data["pid"]): 0}


@pytest.mark.parametrize(
    "hup_key",
    ["'SIGHUP'", "'hup'", "'HUP'", "signal.SIGHUP", "int(signal.SIGHUP)"],
)
def test_custom_signal_map(daemons: Daemons, tmp_path: Path, hup_key: str) -> None:
    signal_map = (
        f"{{{hup_key}: on_signal, 'USR1': None, 'sigalrm': signal.SIG_IGN,"
        " int(signal.SIGINT): 'terminate'}"
    )
    run = Supervised(daemons, tmp_path, RECORDING_BODY.format(kwargs=f"signal_map={signal_map}"))
    data = run.read_report()
    report = run.report
    launcher = json.loads(Path(f"{report}.launcher").read_text())
    pid = data["pid"]

    # Exactly the map's signals change; a custom map replaces PEP 3143's
    # default one (as in python-daemon), so SIGTERM and SIGTSTP stay as they were.
    assert data["signals"] == {
        **launcher["signals"],
        "SIGHUP": "reopen+on_signal",
        "SIGUSR1": "ignore",
        "SIGINT": "terminate",
    }
    assert data["signals"]["SIGTERM"] == data["signals"]["SIGTSTP"] == "default"
    ignored, caught = kernel_dispositions(pid)
    assert {signal.SIGUSR1, signal.SIGALRM} <= ignored
    assert {signal.SIGHUP, signal.SIGINT} <= caught

    # Ignored signals do nothing; the handler really runs, each time.
    os.kill(pid, signal.SIGUSR1)
    os.kill(pid, signal.SIGALRM)
    os.kill(pid, signal.SIGHUP)
    assert wait_for_text(Path(f"{report}.handled"), "1\n") == "1\n"
    os.kill(pid, signal.SIGHUP)
    assert wait_for_text(Path(f"{report}.handled"), "1\n1\n") == "1\n1\n"
    assert is_alive(pid)

    # "terminate" on SIGINT: a clean exit through finally, status 0.
    assert stop(pid, signal.SIGINT)
    statuses = run.statuses(pid)
    assert Path(f"{report}.exit").read_text() == "0"
    assert Path(f"{report}.finally").read_text() == "ran"
    assert statuses == {"launcher": 0, str(pid): 0}


def test_sig_dfl_value_restores_the_default_action(daemons: Daemons, tmp_path: Path) -> None:
    # RECORDING_BODY ignores SIGUSR2 in the launcher; the map must undo that.
    run = Supervised(
        daemons, tmp_path, RECORDING_BODY.format(kwargs="signal_map={'SIGUSR2': signal.SIG_DFL}")
    )
    data = run.read_report()
    pid = data["pid"]

    assert data["signals"]["SIGUSR2"] == "default"
    ignored, caught = kernel_dispositions(pid)
    assert signal.SIGUSR2 not in ignored | caught
    assert stop(pid, signal.SIGUSR2)
    statuses = run.statuses(pid)
    assert statuses == {"launcher": 0, str(pid): -signal.SIGUSR2}
    assert not Path(f"{run.report}.finally").exists()


@pytest.mark.parametrize(
    ("signal_map", "message"),
    [
        pytest.param("{'SIGFOO': None}", "unknown signal name 'SIGFOO'", id="unknown-name"),
        pytest.param("{'FOO': on_signal}", "unknown signal name 'FOO'", id="unknown-short-name"),
        pytest.param("{999: None}", "999 is not a signal number", id="unknown-number"),
        pytest.param("{signal.SIGKILL: None}", "SIGKILL cannot be caught", id="SIGKILL"),
        pytest.param("{'KILL': on_signal}", "SIGKILL cannot be caught", id="KILL-name"),
        pytest.param("{signal.SIGSTOP: on_signal}", "SIGSTOP cannot be caught", id="SIGSTOP"),
        pytest.param(
            "{signal.SIGHUP: 'no_such_method'}",
            "'no_such_method' is not a method",
            id="unknown-method",
        ),
        pytest.param("{'HUP': 'umask'}", "'umask' is not a method", id="attribute-not-method"),
        pytest.param("{signal.SIGHUP: 3.5}", "3.5 is not a handler", id="float-value"),
        pytest.param("{signal.SIGHUP: [on_signal]}", "is not a handler", id="list-value"),
        pytest.param("{signal.SIGHUP: 42}", "42 is neither SIG_DFL nor SIG_IGN", id="int-value"),
        pytest.param("{None: on_signal}", "key None is not a signal", id="None-key"),
    ],
)
def test_bad_signal_map_fails_before_fork(daemons: Daemons, signal_map: str, message: str) -> None:
    launch, report = daemons.launch(
        """
        def on_signal(signum, frame):
            pass

        def forked():
            with open(REPORT + ".forked", "a") as marker:
                marker.write(f"{os.getpid()}\\n")

        os.register_at_fork(before=forked)
        launcher_pid = os.getpid()
        try:
            with daemonkit.DaemonContext(signal_map=eval(sys.argv[2])):
                facts.report(REPORT)
        except daemonkit.SignalMapError:
            with open(REPORT + ".error", "w") as marker:
                json.dump({"pid": os.getpid(), "ppid": os.getppid(), "at": launcher_pid}, marker)
            raise
        """,
        args=[signal_map],
    )

    assert launch.returncode == 1
    assert "SignalMapError" in launch.stderr
    assert message in launch.stderr
    # The error surfaced in the launcher itself (our direct child), and no
    # process was ever forked: no daemon exists to clean up.
    error = json.loads(Path(f"{report}.error").read_text())
    assert error["pid"] == error["at"]
    assert error["ppid"] == os.getpid()
    assert not Path(f"{report}.forked").exists()
    assert not report.exists()
