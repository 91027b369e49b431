"""The daemon really detaches: session, process group, terminal, parent, and
the process environment (cwd, umask, core limit, descriptors) it starts with.

Every check reads the real state of a real process (``facts.collect()`` in the
daemon, or ``/proc`` from the test), never what daemonkit believes it did.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import resource
import signal
import socket
import termios
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemons, daemon_facts, is_alive, parent_of, stop

import daemonkit


def launcher_facts(report: Path) -> dict[str, Any]:
    """What the launching script recorded about itself before ``open()``."""
    data: dict[str, Any] = json.loads(Path(f"{report}.launcher").read_text())
    return data


# A script that records the launcher's own facts, then becomes a daemon with
# the DaemonContext keywords given in its first extra argument (a Python
# expression evaluated in the launcher) and reports from inside the with body.
DAEMON_BODY = """
facts.report(REPORT + ".launcher")
kwargs = eval(sys.argv[2]) if len(sys.argv) > 2 else {}
with daemonkit.DaemonContext(**kwargs):
    facts.report(REPORT)
    linger()
"""


def test_daemon_is_detached_from_launcher(daemons: Daemons) -> None:
    launch, report = daemons.launch(DAEMON_BODY)
    data = daemon_facts(daemons, launch, report)
    launcher = launcher_facts(report)

    assert launch.returncode == 0, launch.stderr
    assert launch.elapsed < 10, "the launcher should exit once the daemon is ready"
    assert data["pid"] != launcher["pid"]
    # Not a session leader, in a session and process group of its own.
    assert data["sid"] != data["pid"]
    assert data["sid"] != launcher["sid"]
    assert data["pgid"] != launcher["pgid"]
    assert data["pgid"] != data["pid"]
    # Its parent was never the launcher; the launcher has exited (and was
    # reaped) while the daemon lives on, re-parented to init or a subreaper.
    assert data["ppid"] != launcher["pid"]
    assert is_alive(data["pid"])
    assert parent_of(data["pid"]) not in (None, launcher["pid"], os.getpid())
    assert stop(data["pid"])


def test_daemon_loses_the_controlling_terminal(daemons: Daemons) -> None:
    """The launcher has a real controlling terminal; the daemon must not."""
    master, slave = pty.openpty()

    def acquire_terminal() -> None:  # runs in the launcher before exec
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    try:
        launch, report = daemons.launch(DAEMON_BODY, stdin=slave, preexec_fn=acquire_terminal)
        data = daemon_facts(daemons, launch, report)
    finally:
        os.close(slave)
        os.close(master)
    launcher = launcher_facts(report)

    assert launch.returncode == 0, launch.stderr
    # The setup is honest: the launcher did have a controlling terminal.
    assert launcher["tty_nr"] != 0
    assert launcher["tty_errno"] == 0
    assert launcher["sid"] == launcher["pid"]

    assert data["tty_nr"] == 0
    assert data["tty_errno_name"] == "ENXIO"
    assert data["sid"] != data["pid"], "a session leader could acquire a terminal again"
    assert data["sid"] != launcher["sid"]
    assert data["pgid"] != launcher["pgid"]


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param("{}", "/", id="default-root"),
        pytest.param("{'working_directory': 'work dir'}", "work dir", id="relative-custom"),
        pytest.param("{'working_directory': WORK}", "work dir", id="absolute-custom"),
    ],
)
def test_working_directory(daemons: Daemons, tmp_path: Path, kwargs: str, expected: str) -> None:
    (tmp_path / "work dir").mkdir()
    body = f"WORK = {str(tmp_path / 'work dir')!r}\n" + DAEMON_BODY
    # The launcher runs in tmp_path, so the default "/" really is a change.
    launch, report = daemons.launch(body, args=[kwargs])
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert launcher_facts(report)["cwd"] == str(tmp_path)
    want = "/" if expected == "/" else str(tmp_path / expected)
    assert data["cwd"] == want


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param("{}", 0o022, id="default-022"),
        pytest.param("{'umask': 0o027}", 0o027, id="custom-027"),
        pytest.param("{'umask': 0}", 0, id="custom-0"),
    ],
)
def test_umask(daemons: Daemons, kwargs: str, expected: int) -> None:
    # A launcher umask that differs from every expected value.
    launch, report = daemons.launch("os.umask(0o077)\n" + DAEMON_BODY, args=[kwargs])
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert launcher_facts(report)["umask"] == 0o077
    assert data["umask"] == expected


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param("{}", [0, 0], id="prevent_core-default"),
        pytest.param("{'prevent_core': True}", [0, 0], id="prevent_core-True"),
        pytest.param("{'prevent_core': False}", [4096, 8192], id="prevent_core-False"),
    ],
)
def test_core_dump_limit(daemons: Daemons, kwargs: str, expected: list[int]) -> None:
    body = "import resource\nresource.setrlimit(resource.RLIMIT_CORE, (4096, 8192))\n"
    launch, report = daemons.launch(body + DAEMON_BODY, args=[kwargs])
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert launcher_facts(report)["core_limit"] == [4096, 8192]
    assert data["core_limit"] == expected


def test_inherited_descriptors_are_closed(daemons: Daemons) -> None:
    body = """
    import socket
    inheritable = os.open("inheritable.txt", os.O_RDWR | os.O_CREAT, 0o644)
    os.set_inheritable(inheritable, True)
    cloexec = os.open("cloexec.txt", os.O_RDONLY | os.O_CREAT, 0o644)
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fobj = open("fobj.txt", "a")
    extra = [inheritable, cloexec, read_end, write_end, sock.fileno(), fobj.fileno()]
    facts.report(REPORT + ".launcher", extra=extra)
    with daemonkit.DaemonContext():
        facts.report(REPORT)
        linger()
    """
    launch, report = daemons.launch(body)
    data = daemon_facts(daemons, launch, report)
    launcher = launcher_facts(report)

    assert launch.returncode == 0, launch.stderr
    for fd in launcher["extra"]:
        assert str(fd) in launcher["fds"], "setup: the launcher had it open"
        assert str(fd) not in data["fds"], f"inherited descriptor {fd} left open"
    assert sorted(data["fds"]) == ["0", "1", "2"]


def test_files_preserve_keeps_descriptors(daemons: Daemons, tmp_path: Path) -> None:
    body = """
    import logging, socket
    raw = os.open("raw.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    fobj = open("fobj.txt", "a")
    handler = logging.FileHandler("handler.log")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("sock")
    listener.listen()
    dropped = os.open("dropped.txt", os.O_RDONLY | os.O_CREAT, 0o644)
    os.set_inheritable(dropped, True)
    kept = {
        "int": raw,
        "file": fobj.fileno(),
        "handler": handler.stream.fileno(),
        "socket": listener.fileno(),
    }
    facts.report(REPORT + ".launcher", kept=kept, dropped=dropped)
    context = daemonkit.DaemonContext(
        working_directory=os.getcwd(), files_preserve=[raw, fobj, handler, listener]
    )
    with context:
        os.write(raw, b"int works\\n")
        fobj.write("file works\\n")
        fobj.flush()
        logger = logging.getLogger("preserved")
        logger.addHandler(handler)
        logger.warning("handler works")
        facts.report(REPORT)
        listener.settimeout(10)
        connection, _ = listener.accept()
        connection.sendall(b"socket works")
        connection.close()
        linger()
    """
    launch, report = daemons.launch(body)
    data = daemon_facts(daemons, launch, report)
    launcher = launcher_facts(report)

    assert launch.returncode == 0, launch.stderr
    kept = launcher["kept"]
    for kind, fd in kept.items():
        assert data["fds"].get(str(fd)) == launcher["fds"][str(fd)], f"{kind} descriptor {fd}"
    assert str(launcher["dropped"]) not in data["fds"]
    assert sorted(data["fds"], key=int) == sorted(
        ["0", "1", "2", *(str(fd) for fd in kept.values())], key=int
    )
    # The preserved objects still work in the daemon.
    assert (tmp_path / "raw.txt").read_text() == "int works\n"
    assert (tmp_path / "fobj.txt").read_text() == "file works\n"
    assert (tmp_path / "handler.log").read_text() == "handler works\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(10)
        client.connect(str(tmp_path / "sock"))
        assert client.recv(100) == b"socket works"


def test_files_preserve_at_high_descriptor_numbers(daemons: Daemons) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 20000:
        pytest.skip(f"needs a hard RLIMIT_NOFILE of 20000, this machine has {hard}")
    body = """
    import resource
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, hard))
    source = os.open("high.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(source, 5000)
    os.dup2(source, 4999)
    os.dup2(source, 6000)
    os.dup2(source, 19999)
    facts.report(REPORT + ".launcher", source=source)
    with daemonkit.DaemonContext(files_preserve=[5000]):
        os.write(5000, b"written through 5000\\n")
        facts.report(REPORT)
        linger()
    """
    launch, report = daemons.launch(body)
    data = daemon_facts(daemons, launch, report)
    launcher = launcher_facts(report)

    assert launch.returncode == 0, launch.stderr
    for fd in ("4999", "5000", "6000", "19999"):
        assert fd in launcher["fds"], "setup: the launcher had it open"
    assert sorted(data["fds"], key=int) == ["0", "1", "2", "5000"]
    assert data["fds"]["5000"] == launcher["fds"]["5000"]
    assert Path(launcher["fds"]["5000"]).read_text() == "written through 5000\n"


NO_DETACH_BODY = """
def forked():
    with open(REPORT + ".forked", "a") as marker:
        marker.write(f"{os.getpid()}\\n")

os.register_at_fork(before=forked)
os.umask(0o077)
facts.report(REPORT + ".launcher")
with daemonkit.DaemonContext(detach_process=False, working_directory=sys.argv[2], umask=0o027):
    facts.report(REPORT)
"""


def test_detach_process_false_stays_in_foreground(daemons: Daemons, tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    launch, report = daemons.launch(NO_DETACH_BODY, args=[str(tmp_path / "work")])
    data = daemon_facts(daemons, launch, report)
    launcher = launcher_facts(report)

    assert launch.returncode == 0, launch.stderr
    # The with body ran in the launching process itself, the test's child.
    assert data["pid"] == launcher["pid"]
    assert data["ppid"] == os.getpid()
    assert not Path(f"{report}.forked").exists(), "something forked"
    # No new session either: it stays where it was started.
    assert data["sid"] == launcher["sid"]
    assert data["pgid"] == launcher["pgid"]
    # ...but the other policies are applied.
    assert data["cwd"] == str(tmp_path / "work")
    assert data["umask"] == 0o027
    assert data["core_limit"] == [0, 0]
    assert data["signals"]["SIGTERM"] == "terminate"
    assert data["signals"]["SIGTSTP"] == "ignore"
    assert {data["fds"][fd] for fd in ("0", "1", "2")} == {"/dev/null"}


@pytest.mark.forked
def test_detach_process_false_in_this_process(tmp_path: Path) -> None:
    """pytest-forked's child of this test process enters the context itself."""
    (tmp_path / "work").mkdir()
    pid, sid, pgid, ppid = os.getpid(), os.getsid(0), os.getpgid(0), os.getppid()
    forks: list[int] = []
    os.register_at_fork(before=lambda: forks.append(os.getpid()))
    os.umask(0o077)
    signal.signal(signal.SIGTSTP, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Keep every descriptor pytest has open (capturing, plugins).
    open_fds = [int(name) for name in os.listdir("/proc/self/fd")]
    context = daemonkit.DaemonContext(
        detach_process=False,
        working_directory=tmp_path / "work",
        umask=0o027,
        files_preserve=open_fds,
    )
    with context:
        umask = os.umask(0)
        os.umask(umask)
        assert context.is_open
        # The with body runs in the process that entered the context.
        assert (os.getpid(), os.getsid(0), os.getpgid(0), os.getppid()) == (pid, sid, pgid, ppid)
        assert os.getcwd() == str(tmp_path / "work")
        assert umask == 0o027
        assert signal.getsignal(signal.SIGTERM) == context.terminate
        for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
            assert signal.getsignal(sig) == signal.SIG_IGN
        assert [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)] == ["/dev/null"] * 3
        assert forks == []
    assert not context.is_open
