"""``detach_process=None``: detach unless a supervisor already made us a daemon.

Each situation is built for real: stdin a socket (a super-server), a parent
whose ``comm`` is ``systemd`` (a copy of the interpreter with that name),
an orphaned launcher whose parent is init, PID 1 of a new PID namespace, and
an ordinary parent. "Did not detach" means the with body ran in the launching
process itself; "detached" means it ran in another process. The reason
daemonkit logs at debug level is checked as well.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemons, Launch, read_json

# argv: REPORT, DaemonContext keywords (a Python expression)[, pid of a parent
# that exits at once, to wait for before doing anything].
DETECT_BODY = """
import logging
logging.basicConfig(
    filename=REPORT + ".log", level=logging.DEBUG, format="%(name)s: %(message)s"
)
if len(sys.argv) > 3:  # orphaned: wait until the parent that started us is gone
    deadline = time.monotonic() + 10
    while os.getppid() == int(sys.argv[3]) and time.monotonic() < deadline:
        time.sleep(0.005)
kwargs = eval(sys.argv[2])
facts.report(REPORT + ".launcher")
if len(sys.argv) > 3 and os.getppid() != 1:
    sys.exit(0)  # adopted by a subreaper, not init: the test skips
with daemonkit.DaemonContext(files_preserve=logging.root.handlers, **kwargs):
    try:
        with open(f"/proc/{os.getppid()}/comm") as comm:
            parent_comm = comm.read().strip()
    except OSError:  # PID 1 of a namespace has no parent there
        parent_comm = None
    facts.report(REPORT, parent_comm=parent_comm)
    daemonkit.ready()  # for wait_ready=True: the report is written
"""


def run(daemons: Daemons, command: list[str], *, stdin: Any = subprocess.DEVNULL) -> Launch:
    """Run ``command`` (tracked for cleanup) to its end."""
    return daemons.run(command, stdin=stdin)


def prepare(daemons: Daemons) -> tuple[list[str], Path]:
    """The command that runs DETECT_BODY (keywords to append) and its report."""
    return daemons.script_command(DETECT_BODY)


def outcome(daemons: Daemons, launch: Launch, report: Path) -> tuple[dict[str, Any], ...]:
    """The launcher's facts, the with body's facts (pid tracked), the debug log."""
    launcher, body = daemons.launcher_and_daemon(launch, report)
    return launcher, body, {"log": Path(f"{report}.log").read_text()}


def assert_not_detached(launcher: dict[str, Any], body: dict[str, Any]) -> None:
    assert body["pid"] == launcher["pid"], "the with body ran in another process"
    assert body["sid"] == launcher["sid"]
    assert body["ppid"] == launcher["ppid"]


def assert_detached(launcher: dict[str, Any], body: dict[str, Any]) -> None:
    assert body["pid"] != launcher["pid"], "the with body ran in the launching process"
    assert body["ppid"] != launcher["pid"]
    assert body["sid"] != launcher["sid"]
    assert body["sid"] != body["pid"]


def test_ordinary_parent_detaches(daemons: Daemons) -> None:
    command, report = prepare(daemons)
    launch = run(daemons, [*command, "{}"])
    launcher, body, log = outcome(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert launcher["ppid"] == os.getpid()
    assert_detached(launcher, body)
    assert f"daemonkit: detach: parent (PID {os.getpid()}) is an ordinary" in log["log"]


@pytest.mark.parametrize(
    ("kwargs", "detaches"),
    [
        pytest.param("{}", False, id="auto"),
        pytest.param("{'detach_process': None}", False, id="None"),
        pytest.param("{'detach_process': True}", True, id="explicit-True-wins"),
        pytest.param("{'detach_process': False}", False, id="explicit-False"),
    ],
)
def test_stdin_socket(daemons: Daemons, kwargs: str, detaches: bool) -> None:
    """Started by a super-server (inetd-style): stdin is a socket."""
    command, report = prepare(daemons)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        launch = run(daemons, [*command, kwargs], stdin=theirs)
    launcher, body, log = outcome(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert launcher["fds"]["0"].startswith("socket:"), "setup: stdin is a socket"
    if detaches:
        assert_detached(launcher, body)
        assert "daemonkit: detach: detach_process given explicitly" in log["log"]
    else:
        assert_not_detached(launcher, body)
        assert body["ppid"] == os.getpid()
        if "False" not in kwargs:
            assert "daemonkit: no detach: stdin is a socket" in log["log"]


# Runs its arguments as a child (without passing PYTHONHOME on) and waits.
SPAWN = (
    "import os, subprocess, sys; env = dict(os.environ); env.pop('PYTHONHOME', None);"
    " sys.exit(subprocess.call(sys.argv[1:], env=env))"
)


@pytest.mark.parametrize(
    ("kwargs", "detaches"),
    [
        pytest.param("{}", False, id="auto"),
        pytest.param("{'detach_process': True}", True, id="explicit-True-wins"),
    ],
)
def test_systemd_parent(
    daemons: Daemons, systemd_python: list[str], kwargs: str, detaches: bool
) -> None:
    command, report = prepare(daemons)
    launch = run(daemons, [*systemd_python, "-c", SPAWN, *command, kwargs])
    launcher, body, log = outcome(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    with open(f"/proc/{os.getpid()}/comm") as comm:
        assert comm.read().strip() != "systemd"
    if detaches:
        assert_detached(launcher, body)
        assert "daemonkit: detach: detach_process given explicitly" in log["log"]
    else:
        assert_not_detached(launcher, body)
        assert body["parent_comm"] == "systemd"
        assert "daemonkit: no detach: parent (PID" in log["log"]
        assert "is a systemd service manager" in log["log"]


# Starts its arguments (plus its own pid) as a child and exits at once,
# leaving the child an orphan; prints the child's pid.
ORPHAN = (
    "import os, subprocess, sys;"
    " out = open(sys.argv[1], 'w');"
    " child = subprocess.Popen([*sys.argv[2:], str(os.getpid())],"
    " stdin=subprocess.DEVNULL, stdout=out, stderr=out);"
    " print(child.pid, flush=True); os._exit(0)"
)


@pytest.mark.parametrize(
    ("kwargs", "detaches"),
    [
        pytest.param("{}", False, id="auto"),
        pytest.param("{'detach_process': True}", True, id="explicit-True-wins"),
    ],
)
def test_init_parent(daemons: Daemons, kwargs: str, detaches: bool) -> None:
    command, report = prepare(daemons)
    output = daemons.tmp_path / "orphan.out"
    wrapper = run(daemons, [sys.executable, "-c", ORPHAN, str(output), *command, kwargs])
    assert wrapper.returncode == 0, wrapper.stderr
    daemons.track(int(wrapper.stdout))
    launcher = read_json(Path(f"{report}.launcher"))
    if launcher["ppid"] != 1:
        with open(f"/proc/{launcher['ppid']}/comm") as comm:
            name = comm.read().strip()
        pytest.skip(
            f"a subreaper in the ancestry (PID {launcher['ppid']}, {name}) adopts "
            "orphans instead of init"
        )
    launcher, body, log = outcome(daemons, Launch(-1, "", output.read_text(), 0), report)

    assert launcher["pid"] == int(wrapper.stdout)
    if detaches:
        assert_detached(launcher, body)
        assert "daemonkit: detach: detach_process given explicitly" in log["log"]
    else:
        assert_not_detached(launcher, body)
        assert body["ppid"] == 1
        assert "daemonkit: no detach: parent is init (PID 1)" in log["log"]


@pytest.mark.parametrize(
    ("kwargs", "detaches"),
    [
        pytest.param("{}", False, id="auto"),
        # The namespace ends with its PID 1, the launcher: wait_ready keeps it
        # until the daemon has written its report.
        pytest.param("{'detach_process': True, 'wait_ready': True}", True, id="explicit-True-wins"),
    ],
)
def test_pid_1_of_a_pid_namespace(daemons: Daemons, kwargs: str, detaches: bool) -> None:
    """As PID 1 of a container (a new PID namespace), the process stays."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare(1) from util-linux")
    namespace = [unshare, "--pid", "--fork", "--mount-proc", "--kill-child"]
    check = subprocess.run(
        [*namespace, sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if check.returncode != 0 or check.stdout.strip() != "1":
        pytest.skip(f"cannot create a PID namespace here: {check.stderr.strip()}")
    command, report = prepare(daemons)
    launch = run(daemons, [*namespace, *command, kwargs])
    # Pids in these reports are the namespace's: never track or signal them
    # (PID 1 here is not our init). The namespace dies with its PID 1.
    launcher = read_json(Path(f"{report}.launcher"))
    body = read_json(report)
    log = Path(f"{report}.log").read_text()

    assert launch.returncode == 0, launch.stderr
    assert launcher["pid"] == 1
    if detaches:
        assert body["pid"] != 1
        assert body["sid"] != body["pid"]
        assert "daemonkit: detach: detach_process given explicitly" in log
    else:
        assert body["pid"] == 1
        assert body["sid"] == launcher["sid"]
        assert "daemonkit: no detach: process is PID 1" in log
