"""Socket activation: descriptors from 3 up, ``$LISTEN_PID``/``$LISTEN_FDS``/``$LISTEN_FDNAMES``.

The test opens real sockets, and a small wrapper puts them at descriptors
3, 4, 5 exactly, sets ``$LISTEN_PID`` to its own pid and execs the program
under test (exec keeps the pid), which is what systemd does. Connections
and datagrams are queued on the sockets before the program starts, so the
program proves it holds the very same sockets by reading them.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemons, Launch, clean_env, daemon_facts, is_alive, stop

ACTIVATION_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

# argv[1]: JSON {"fds": {target: source}, "listen_pid": "self" | "unset" | text};
# argv[2:]: the program. Moves each source descriptor to its target number,
# closes the sources, sets $LISTEN_PID and execs the program.
WRAPPER = """
import fcntl, json, os, sys
spec = json.loads(sys.argv[1])
high = {int(target): fcntl.fcntl(source, fcntl.F_DUPFD, 100)
        for target, source in spec["fds"].items()}
for source in spec["fds"].values():
    os.close(source)
for target, fd in high.items():
    os.dup2(fd, target)
    os.close(fd)
if spec["listen_pid"] == "self":
    os.environ["LISTEN_PID"] = str(os.getpid())
elif spec["listen_pid"] == "unset":
    os.environ.pop("LISTEN_PID", None)
else:
    os.environ["LISTEN_PID"] = spec["listen_pid"]
os.execv(sys.executable, [sys.executable, *sys.argv[2:]])
"""

# What a program checks about each socket it was given.
DESCRIBE = """
import fcntl, socket


def describe(sock, name=None):
    fd = sock.fileno()
    return {
        "name": name,
        "fd": fd,
        "family": int(sock.family),
        "type": int(sock.type),
        "sockname": sock.getsockname(),
        "cloexec": bool(fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
        "is_socket": isinstance(sock, socket.socket),
    }


def environment():
    return {key: os.environ.get(key) for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")}
"""


class Sockets:
    """The sockets a socket unit would create, closed after the test."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.opened: list[socket.socket] = []

    def _keep(self, sock: socket.socket) -> socket.socket:
        self.opened.append(sock)
        sock.settimeout(10)
        return sock

    def tcp_listener(self) -> socket.socket:
        sock = self._keep(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        return sock

    def udp(self) -> socket.socket:
        sock = self._keep(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        sock.bind(("127.0.0.1", 0))
        return sock

    def unix_listener(self) -> socket.socket:
        sock = self._keep(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        sock.bind(str(self.directory / f"ctl{len(self.opened)}"))
        sock.listen(8)
        return sock

    def connect(self, listener: socket.socket, data: bytes) -> socket.socket:
        """A client connection queued on ``listener`` with ``data`` already sent."""
        client = self._keep(socket.socket(listener.family, socket.SOCK_STREAM))
        client.connect(listener.getsockname())
        client.sendall(data)
        return client

    def close(self) -> None:
        for sock in self.opened:
            sock.close()


@pytest.fixture
def sockets(short_dir: Path) -> Iterator[Sockets]:
    made = Sockets(short_dir)
    try:
        yield made
    finally:
        made.close()


def activate(
    daemons: Daemons,
    body: str,
    fds: list[int],
    *,
    env: dict[str, str] | None = None,
    listen_pid: str = "self",
    extra_fds: dict[int, int] | None = None,
    args: list[str] | None = None,
) -> tuple[Launch, Path]:
    """Run ``body`` as a program given ``fds`` at 3, 4, ... (and ``extra_fds``)."""
    script = daemons.script(DESCRIBE + body)
    report = daemons.report_path()
    targets = {3 + index: fd for index, fd in enumerate(fds)}
    targets.update(extra_fds or {})
    spec = json.dumps({"fds": targets, "listen_pid": listen_pid})
    launch = daemons.run(
        [sys.executable, "-c", WRAPPER, spec, str(script), str(report), *(args or [])],
        env=clean_env(**(env or {})),
        pass_fds=tuple(targets.values()),
        timeout=20,
    )
    return launch, report


def finished(daemons: Daemons, launch: Launch, report: Path) -> dict[str, Any]:
    """The report of a program that ran to its end."""
    assert launch.returncode == 0, launch.stderr
    assert launch.stderr == ""
    return daemon_facts(daemons, launch, report)


def sockname(sock: socket.socket) -> Any:
    """``getsockname()`` as it comes back through JSON."""
    name = sock.getsockname()
    return list(name) if isinstance(name, tuple) else name


# -- listen_fds() and friends -------------------------------------------------------


def test_one_tcp_socket(daemons: Daemons, sockets: Sockets) -> None:
    listener = sockets.tcp_listener()
    sockets.connect(listener, b"hello over tcp")
    launch, report = activate(
        daemons,
        """
environment_before = environment()
fds = daemonkit.notify.listen_fds()
described = [describe(sock) for sock in fds]
connection, _ = fds[0].accept()
connection.settimeout(10)
received = connection.recv(100).decode()
facts.report(REPORT, described=described, received=received,
             before=environment_before, after=environment())
""",
        [listener.fileno()],
        env={"LISTEN_FDS": "1"},
    )
    data = finished(daemons, launch, report)

    assert data["before"]["LISTEN_PID"] == str(data["pid"]), "setup: LISTEN_PID is not ours"
    [described] = data["described"]
    assert described["fd"] == 3
    assert described["is_socket"]
    assert described["family"] == socket.AF_INET
    assert described["type"] == socket.SOCK_STREAM
    assert described["sockname"] == sockname(listener)
    assert described["cloexec"], "an activated descriptor is inherited by exec"
    assert data["received"] == "hello over tcp"
    # Removed by default, so that children do not think they were activated.
    assert data["after"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


THREE_SOCKETS_BODY = """
call = sys.argv[2]
environment_before = environment()
if call == "names":
    pairs = daemonkit.notify.listen_fds_with_names()
else:
    pairs = [(None, sock) for sock in daemonkit.notify.listen_fds()]
described = [describe(sock, name) for name, sock in pairs]
tcp, udp, unix = (sock for _, sock in pairs)
connection, _ = tcp.accept()
connection.settimeout(10)
unix_connection, _ = unix.accept()
unix_connection.settimeout(10)
udp.settimeout(10)
received = [
    connection.recv(100).decode(),
    udp.recv(100).decode(),
    unix_connection.recv(100).decode(),
]
facts.report(REPORT, described=described, received=received,
             before=environment_before, after=environment())
"""


@pytest.mark.parametrize("call", ["names", "plain"])
def test_three_sockets(daemons: Daemons, sockets: Sockets, call: str) -> None:
    tcp, udp, unix = sockets.tcp_listener(), sockets.udp(), sockets.unix_listener()
    sockets.connect(tcp, b"tcp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"udp", udp.getsockname())
    sockets.connect(unix, b"unix")
    launch, report = activate(
        daemons,
        THREE_SOCKETS_BODY,
        [tcp.fileno(), udp.fileno(), unix.fileno()],
        env={"LISTEN_FDS": "3", "LISTEN_FDNAMES": "web:udp:ctl"},
        args=[call],
    )
    data = finished(daemons, launch, report)

    kinds = [(d["fd"], d["family"], d["type"]) for d in data["described"]]
    assert kinds == [
        (3, socket.AF_INET, socket.SOCK_STREAM),
        (4, socket.AF_INET, socket.SOCK_DGRAM),
        (5, socket.AF_UNIX, socket.SOCK_STREAM),
    ]
    assert [d["sockname"] for d in data["described"]] == [sockname(s) for s in (tcp, udp, unix)]
    assert all(d["is_socket"] and d["cloexec"] for d in data["described"])
    if call == "names":
        assert [d["name"] for d in data["described"]] == ["web", "udp", "ctl"]
    assert data["received"] == ["tcp", "udp", "unix"]
    assert data["before"]["LISTEN_FDNAMES"] == "web:udp:ctl"
    assert data["after"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        pytest.param(None, ["unknown", "unknown", "unknown"], id="unset"),
        pytest.param("", ["unknown", "unknown", "unknown"], id="empty"),
        pytest.param("web", ["web", "unknown", "unknown"], id="fewer"),
        pytest.param("web:udp:ctl:extra", ["web", "udp", "ctl"], id="more"),
    ],
)
def test_missing_names_are_unknown(
    daemons: Daemons, sockets: Sockets, names: str | None, expected: list[str]
) -> None:
    fds = [sockets.tcp_listener().fileno(), sockets.udp().fileno(), sockets.tcp_listener().fileno()]
    env = {"LISTEN_FDS": "3"}
    if names is not None:
        env["LISTEN_FDNAMES"] = names
    launch, report = activate(
        daemons,
        """
pairs = daemonkit.notify.listen_fds_with_names()
facts.report(REPORT, names=[name for name, _ in pairs], fds=[s.fileno() for _, s in pairs])
""",
        fds,
        env=env,
    )
    data = finished(daemons, launch, report)
    assert data["names"] == expected
    assert data["fds"] == [3, 4, 5]


def test_environment_kept_on_request(daemons: Daemons, sockets: Sockets) -> None:
    listener = sockets.tcp_listener()
    launch, report = activate(
        daemons,
        """
kept_sockets = daemonkit.notify.listen_fds(unset_environment=False)
first = [describe(sock) for sock in kept_sockets]
kept = environment()
again = daemonkit.notify.listen_fd_numbers(unset_environment=False)
names = daemonkit.notify.listen_fd_names()
facts.report(REPORT, first=first, kept=kept, again=again, names=names)
""",
        [listener.fileno()],
        env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"},
    )
    data = finished(daemons, launch, report)
    assert [d["fd"] for d in data["first"]] == [3]
    assert data["kept"] == {
        "LISTEN_PID": str(data["pid"]),
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "web",
    }
    assert data["again"] == [3]
    assert data["names"] == ["web"]


@pytest.mark.parametrize("listen_pid", ["parent", "unset", "garbage"])
def test_wrong_listen_pid_is_ignored(daemons: Daemons, sockets: Sockets, listen_pid: str) -> None:
    listener = sockets.tcp_listener()
    value = {"parent": str(os.getpid()), "unset": "unset", "garbage": "me"}[listen_pid]
    launch, report = activate(
        daemons,
        """
import fcntl
before = environment()
results = {
    "numbers": daemonkit.notify.listen_fd_numbers(unset_environment=False),
    "names": daemonkit.notify.listen_fd_names(),
    "with_names": daemonkit.notify.listen_fds_with_names(unset_environment=False),
    "fds": daemonkit.notify.listen_fds(),
}
facts.report(REPORT, results=results, before=before,
             fd3_cloexec=bool(fcntl.fcntl(3, fcntl.F_GETFD) & fcntl.FD_CLOEXEC))
""",
        [listener.fileno()],
        env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "web"},
        listen_pid=value,
    )
    data = finished(daemons, launch, report)
    assert data["before"]["LISTEN_PID"] == (None if value == "unset" else value)
    assert data["results"] == {"numbers": [], "names": [], "with_names": [], "fds": []}
    # Descriptor 3 is somebody else's business: left open and untouched.
    assert data["fds"]["3"].startswith("socket:")
    assert not data["fd3_cloexec"]


def test_a_pipe_is_not_a_socket(daemons: Daemons) -> None:
    read_end, write_end = os.pipe()
    os.write(write_end, b"piped")
    try:
        launch, report = activate(
            daemons,
            """
try:
    daemonkit.notify.listen_fds(unset_environment=False)
except daemonkit.ConfigurationError as exc:
    error = {"message": str(exc), "value_error": isinstance(exc, ValueError)}
else:
    error = None
numbers = daemonkit.notify.listen_fd_numbers()
facts.report(REPORT, error=error, numbers=numbers, read=os.read(3, 100).decode())
""",
            [read_end],
            env={"LISTEN_FDS": "1"},
        )
    finally:
        os.close(write_end)
        os.close(read_end)
    data = finished(daemons, launch, report)
    assert data["error"] is not None, "listen_fds() accepted a pipe"
    assert "3" in data["error"]["message"]
    assert "not a socket" in data["error"]["message"]
    assert data["error"]["value_error"]
    assert data["numbers"] == [3]
    assert data["fds"]["3"].startswith("pipe:")
    assert data["read"] == "piped"


MIXED_BODY = """
try:
    daemonkit.notify.listen_fds()
except daemonkit.ConfigurationError:
    failed = True
else:
    failed = False
facts.report(REPORT, failed=failed, numbers=daemonkit.notify.listen_fd_numbers(),
             environment=environment())
"""


def test_failing_listen_fds_leaves_the_sockets_open(daemons: Daemons, sockets: Sockets) -> None:
    read_end, write_end = os.pipe()
    try:
        launch, report = activate(
            daemons,
            MIXED_BODY,
            [sockets.tcp_listener().fileno(), read_end],
            env={"LISTEN_FDS": "2"},
        )
    finally:
        os.close(write_end)
        os.close(read_end)
    data = finished(daemons, launch, report)
    assert data["failed"]
    assert "3" in data["fds"], "descriptor 3 was closed by the failed call"
    assert data["fds"]["3"].startswith("socket:")


def test_failing_listen_fds_leaves_the_environment(daemons: Daemons) -> None:
    read_end, write_end = os.pipe()
    try:
        launch, report = activate(daemons, MIXED_BODY, [read_end], env={"LISTEN_FDS": "1"})
    finally:
        os.close(write_end)
        os.close(read_end)
    data = finished(daemons, launch, report)
    assert data["failed"]
    assert data["numbers"] == [3]


# -- DaemonContext keeps activated descriptors --------------------------------------

ACTIVATED_DAEMON_BODY = """
facts.report(REPORT + ".launcher")
with daemonkit.DaemonContext(detach_process=True):
    listen_pid = os.environ.get("LISTEN_PID")
    listener = daemonkit.notify.listen_fds()[0]
    facts.report(REPORT, listen_pid=listen_pid, listener=describe(listener))
    listener.settimeout(20)
    connection, _ = listener.accept()
    connection.settimeout(10)
    connection.sendall(connection.recv(100))
    linger(30)
"""


def test_daemon_context_keeps_the_activated_socket(daemons: Daemons, sockets: Sockets) -> None:
    listener = sockets.tcp_listener()
    address = listener.getsockname()
    other_read, other_write = os.pipe()  # inherited at 4, not activated
    try:
        launch, report = activate(
            daemons,
            ACTIVATED_DAEMON_BODY,
            [listener.fileno()],
            env={"LISTEN_FDS": "1"},
            extra_fds={4: other_write},
        )
    finally:
        os.close(other_write)
    try:
        listener.close()  # from now on only the daemon holds the socket
        assert launch.returncode == 0, launch.stderr
        launcher = json.loads(Path(f"{report}.launcher").read_text())
        daemons.track(launcher["pid"])
        data = daemon_facts(daemons, launch, report)

        assert data["pid"] != launcher["pid"], "setup: the context did not detach"
        assert launcher["fds"]["4"].startswith("pipe:"), "setup: fd 4 was not inherited"
        assert data["listen_pid"] == str(data["pid"]), "LISTEN_PID does not name the daemon"
        assert data["fds"]["3"].startswith("socket:")
        assert data["listener"]["sockname"] == list(address)
        assert data["listener"]["type"] == socket.SOCK_STREAM
        assert "4" not in data["fds"], "a non-activated inherited descriptor was kept"

        with socket.create_connection(address, timeout=10) as client:
            client.sendall(b"echo me")
            assert client.recv(100) == b"echo me"
        # Every copy of the pipe's write end is closed: nobody kept fd 4.
        assert select.select([other_read], [], [], 10)[0], "fd 4 is still open somewhere"
        assert os.read(other_read, 100) == b""
        assert is_alive(data["pid"])
        assert stop(data["pid"])
    finally:
        os.close(other_read)
