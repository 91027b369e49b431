"""sd_notify without C: a fake service manager receives exactly what is sent.

The fake manager is an ``AF_UNIX`` datagram socket bound by the test, at a
path or at an abstract address (``@name``), named to a real child process
by ``$NOTIFY_SOCKET``. ``SO_PASSCRED`` tells which process sent each
datagram, and ``SCM_RIGHTS`` carries the descriptors of ``FDSTORE=1``.

Child programs print one JSON line with what they observed; datagrams are
read with timeouts, so a missing one fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import os
import queue
import select
import socket
import stat
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemons, Launch, clean_env, is_alive, stop

# Sets the variable named by argv[1] to this process's pid, then execs the
# interpreter with argv[2:]: exec keeps the pid, as systemd's own exec does.
SELF_PID_EXEC = (
    "import os, sys; os.environ[sys.argv[1]] = str(os.getpid());"
    " os.execv(sys.executable, [sys.executable, *sys.argv[2:]])"
)


@dataclass
class Datagram:
    """One sd_notify message as the manager received it."""

    lines: list[str]
    sender: int | None
    fds: list[int] = field(default_factory=list)
    truncated: bool = False


class FakeManager:
    """The service manager's end of ``$NOTIFY_SOCKET``.

    Like a real manager it reads all the time (a thread), so a sender never
    blocks on a full queue (``net.unix.max_dgram_qlen`` may be as low as 10).
    """

    def __init__(self, form: str, directory: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        if form == "path":
            path = str(directory / "notify")
            self.sock.bind(path)
            self.address = path
        else:
            name = f"daemonkit-test/{os.getpid()}/{os.urandom(8).hex()}"
            self.sock.bind(b"\0" + name.encode())
            self.address = "@" + name
        self.sock.setblocking(False)
        self.fds: list[int] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[Datagram] = queue.Queue()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def env(self, **extra: str) -> dict[str, str]:
        """An environment naming this manager in ``$NOTIFY_SOCKET``."""
        return clean_env(NOTIFY_SOCKET=self.address, **extra)

    def _read(self) -> Datagram:
        data, ancillary, flags, _ = self.sock.recvmsg(
            65536, socket.CMSG_SPACE(12) + socket.CMSG_SPACE(16 * 4)
        )
        sender = None
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                sender = int.from_bytes(payload[:4], sys.byteorder)
            elif level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds.extend(
                    int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4)
                )
        self.fds.extend(fds)
        truncated = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC))
        return Datagram(data.decode().splitlines(), sender, fds, truncated)

    def _drain_socket(self) -> None:
        with self._lock:
            while True:
                try:
                    self._queue.put(self._read())
                except (BlockingIOError, OSError):
                    return

    def _pump(self) -> None:
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        while not self._closing.is_set():
            if poller.poll(50):
                self._drain_socket()

    def receive(self, timeout: float = 10.0) -> Datagram:
        """The next datagram; the test fails if none arrives in ``timeout`` s."""
        try:
            datagram = self._queue.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the fake manager received nothing within {timeout} s")
        assert not datagram.truncated, datagram
        return datagram

    def pending(self) -> list[Datagram]:
        """Every datagram received so far (does not wait)."""
        self._drain_socket()
        received = []
        while True:
            try:
                received.append(self._queue.get_nowait())
            except queue.Empty:
                break
        assert not any(datagram.truncated for datagram in received), received
        return received

    def until(self, last_line: str, timeout: float = 10.0) -> list[Datagram]:
        """Datagrams up to and including the one that carries ``last_line``."""
        deadline = time.monotonic() + timeout
        received: list[Datagram] = []
        while not received or last_line not in received[-1].lines:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"no {last_line!r} within {timeout} s; got {received}")
            received.append(self.receive(remaining))
        return received

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self.sock.close()
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, short_dir: Path) -> Iterator[FakeManager]:
    """A fake service manager, bound at a path or at an abstract ``@`` address."""
    fake = FakeManager(request.param, short_dir)
    try:
        yield fake
    finally:
        fake.close()


def run_child(
    daemons: Daemons, code: str, env: dict[str, str], prefix: list[str] | None = None
) -> tuple[Launch, Any]:
    """Run ``code`` in a fresh interpreter; return how it ended and its last JSON line."""
    command = [sys.executable, *(prefix or []), "-c", textwrap.dedent(code)]
    launch = daemons.run(command, env=env, timeout=20)
    assert launch.returncode == 0, launch.stderr
    assert launch.stderr == ""
    lines = launch.stdout.strip().splitlines()
    assert lines, "the child printed nothing"
    return launch, json.loads(lines[-1])


# -- the fields arrive exactly as sent, one datagram per call ------------------------

CALLS = [
    pytest.param("daemonkit.ready()", ["READY=1"], id="ready"),
    pytest.param("daemonkit.ready('serving')", ["READY=1", "STATUS=serving"], id="ready-status"),
    pytest.param("notify.notify('READY=1')", ["READY=1"], id="positional"),
    pytest.param(
        "notify.notify('READY=1', 'STATUS=up')", ["READY=1", "STATUS=up"], id="positional-2"
    ),
    pytest.param("notify.notify(ready=1, status='x')", ["READY=1", "STATUS=x"], id="kwargs"),
    pytest.param("notify.notify(ready=True)", ["READY=1"], id="kwargs-bool"),
    pytest.param(
        "notify.notify('STATUS=a', errno=5)", ["STATUS=a", "ERRNO=5"], id="positional-and-kwargs"
    ),
    pytest.param("notify.status('loading data')", ["STATUS=loading data"], id="status"),
    pytest.param("notify.status('two\\nlines')", ["STATUS=two lines"], id="status-one-line"),
    pytest.param("notify.stopping()", ["STOPPING=1"], id="stopping"),
    pytest.param("notify.notify(errno=2)", ["ERRNO=2"], id="errno"),
    pytest.param("notify.notify(mainpid=4242)", ["MAINPID=4242"], id="mainpid"),
    pytest.param("notify.watchdog_ping()", ["WATCHDOG=1"], id="watchdog"),
    pytest.param("notify.notify('WATCHDOG=trigger')", ["WATCHDOG=trigger"], id="watchdog-trigger"),
    pytest.param(
        "notify.extend_timeout(2.5)", ["EXTEND_TIMEOUT_USEC=2500000"], id="extend-timeout"
    ),
]


@pytest.mark.parametrize(("call", "expected"), CALLS)
def test_manager_receives_exactly_the_fields(
    daemons: Daemons, manager: FakeManager, call: str, expected: list[str]
) -> None:
    _, result = run_child(
        daemons,
        f"""
        import json, os
        import daemonkit
        from daemonkit import notify
        returned = {call}
        print(json.dumps({{"pid": os.getpid(), "returned": returned}}))
        """,
        manager.env(),
    )
    datagram = manager.receive()
    assert datagram.lines == expected
    assert datagram.sender == result["pid"]
    assert datagram.fds == []
    assert manager.pending() == [], "more than one datagram for one call"
    if not call.startswith("daemonkit.ready"):  # ready() returns None
        assert result["returned"] is True


def test_one_datagram_per_call_in_order(daemons: Daemons, manager: FakeManager) -> None:
    run_child(
        daemons,
        """
        import json
        from daemonkit import notify
        notify.status("one")
        notify.notify("STATUS=two", "X_CUSTOM=yes")
        notify.notify(status="three")
        notify.stopping()
        print(json.dumps({}))
        """,
        manager.env(),
    )
    received = [datagram.lines for datagram in manager.pending()]
    assert received == [
        ["STATUS=one"],
        ["STATUS=two", "X_CUSTOM=yes"],
        ["STATUS=three"],
        ["STOPPING=1"],
    ]


def test_reloading_carries_the_current_monotonic_time(
    daemons: Daemons, manager: FakeManager
) -> None:
    _, result = run_child(
        daemons,
        """
        import json, time
        from daemonkit import notify
        def now():
            return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        before = now()
        notify.reloading()
        after = now()
        print(json.dumps({"before": before, "after": after}))
        """,
        manager.env(),
    )
    received_at = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    datagram = manager.receive()
    assert len(datagram.lines) == 2
    assert datagram.lines[0] == "RELOADING=1"
    key, _, value = datagram.lines[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert value.isdigit()
    assert result["before"] <= int(value) <= result["after"]
    # CLOCK_MONOTONIC is system-wide: close to the test's own clock.
    assert 0 <= received_at - int(value) < 10_000_000


def test_store_fds_passes_the_descriptor(daemons: Daemons, manager: FakeManager) -> None:
    _, result = run_child(
        daemons,
        """
        import json, os
        from daemonkit import notify
        read_end, write_end = os.pipe()
        os.write(write_end, b"through the store")
        os.close(write_end)
        info = os.fstat(read_end)
        returned = notify.store_fds([read_end], name="x")
        print(json.dumps({"ino": info.st_ino, "dev": info.st_dev, "returned": returned}))
        """,
        manager.env(),
    )
    assert result["returned"] is True
    datagram = manager.receive()
    assert datagram.lines == ["FDSTORE=1", "FDNAME=x"]
    assert len(datagram.fds) == 1
    fd = datagram.fds[0]
    info = os.fstat(fd)
    assert stat.S_ISFIFO(info.st_mode)
    assert (info.st_ino, info.st_dev) == (result["ino"], result["dev"])
    os.set_blocking(fd, False)
    assert os.read(fd, 100) == b"through the store"
    assert os.read(fd, 100) == b""  # the writer (the child) is gone


def test_store_fds_several_without_a_name(daemons: Daemons, manager: FakeManager) -> None:
    _, result = run_child(
        daemons,
        """
        import json, os
        from daemonkit import notify
        ends = os.pipe()
        notify.store_fds(list(ends))
        print(json.dumps({"inos": [os.fstat(fd).st_ino for fd in ends]}))
        """,
        manager.env(),
    )
    datagram = manager.receive()
    assert datagram.lines == ["FDSTORE=1"]
    assert [os.fstat(fd).st_ino for fd in datagram.fds] == result["inos"]
    # The two received descriptors are the two ends of one pipe.
    read_end, write_end = datagram.fds
    os.write(write_end, b"round trip")
    os.set_blocking(read_end, False)
    assert os.read(read_end, 100) == b"round trip"


INVALID_CALLS = [
    pytest.param("notify.notify('READY')", id="no-equals"),
    pytest.param("notify.notify('=1')", id="no-key"),
    pytest.param("notify.notify('STATUS=a\\nb')", id="newline-in-line"),
    pytest.param("notify.notify(status='a\\nb')", id="newline-in-kwarg"),
    pytest.param("notify.notify('READY=1', status='a\\nb')", id="valid-then-invalid"),
    pytest.param("notify.notify('READY=1', 'STATUS')", id="invalid-second-line"),
]


@pytest.mark.parametrize("call", INVALID_CALLS)
def test_invalid_lines_raise_and_send_nothing(
    daemons: Daemons, manager: FakeManager, call: str
) -> None:
    _, result = run_child(
        daemons,
        f"""
        import json
        from daemonkit import notify
        try:
            {call}
        except ValueError as exc:
            raised = type(exc).__name__
        else:
            raised = None
        notify.notify("STATUS=end")
        print(json.dumps({{"raised": raised}}))
        """,
        manager.env(),
    )
    assert result["raised"] == "ValueError"
    # Nothing, not even the valid part, was sent before the marker.
    assert [datagram.lines for datagram in manager.pending()] == [["STATUS=end"]]


@pytest.mark.parametrize("where", ["missing-path", "stale-path", "abstract"])
def test_unreachable_notify_socket_raises(daemons: Daemons, short_dir: Path, where: str) -> None:
    if where == "missing-path":
        address = str(short_dir / "nobody")
    elif where == "stale-path":
        address = str(short_dir / "stale")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as gone:
            gone.bind(address)  # the file stays; nothing listens behind it
    else:
        address = f"@daemonkit-test/nobody/{os.urandom(8).hex()}"
    _, result = run_child(
        daemons,
        """
        import json, os
        import daemonkit
        from daemonkit import notify
        try:
            notify.notify("READY=1")
        except notify.NotifyError as exc:
            caught = {
                "message": str(exc),
                "errno": exc.errno,
                "daemon_error": isinstance(exc, daemonkit.DaemonError),
                "os_error": isinstance(exc, OSError),
            }
        else:
            caught = None
        print(json.dumps(caught))
        """,
        clean_env(NOTIFY_SOCKET=address),
    )
    assert result is not None, "notify() to an unreachable socket did not raise"
    assert result["daemon_error"]
    assert result["os_error"]
    assert address in result["message"]
    assert result["errno"] in (2, 111)  # ENOENT, ECONNREFUSED


@pytest.mark.parametrize("value", ["unset", "empty"])
def test_nobody_listening_is_a_cheap_noop(daemons: Daemons, value: str) -> None:
    env = clean_env() if value == "unset" else clean_env(NOTIFY_SOCKET="")
    _, result = run_child(
        daemons,
        """
        import json, os, time
        import daemonkit
        from daemonkit import notify
        fds = sorted(os.listdir("/proc/self/fd"))
        returned = [
            notify.notify("READY=1"),
            notify.notify(status="x"),
            notify.status("y"),
            notify.stopping(),
            notify.watchdog_ping(),
        ]
        ready = daemonkit.ready()
        began = time.monotonic()
        for _ in range(10000):
            daemonkit.ready("serving")
        elapsed = time.monotonic() - began
        print(json.dumps({
            "returned": returned,
            "ready": ready,
            "elapsed": elapsed,
            "same_fds": sorted(os.listdir("/proc/self/fd")) == fds,
        }))
        """,
        env,
    )
    assert result["returned"] == [False] * 5
    assert result["ready"] is None
    assert result["same_fds"]
    assert result["elapsed"] < 2.0  # 10000 calls: microseconds each, not a syscall storm


def test_unset_environment_removes_notify_socket(daemons: Daemons, manager: FakeManager) -> None:
    _, result = run_child(
        daemons,
        """
        import json, os
        from daemonkit import notify
        first = notify.notify("READY=1", unset_environment=True)
        present = "NOTIFY_SOCKET" in os.environ
        second = notify.notify("STATUS=after")
        print(json.dumps({"first": first, "present": present, "second": second}))
        """,
        manager.env(),
    )
    assert result == {"first": True, "present": False, "second": False}
    assert [datagram.lines for datagram in manager.pending()] == [["READY=1"]]


def test_notify_socket_kept_by_default(daemons: Daemons, manager: FakeManager) -> None:
    _, result = run_child(
        daemons,
        """
        import json, os
        from daemonkit import notify
        notify.notify("READY=1")
        print(json.dumps({"value": os.environ.get("NOTIFY_SOCKET")}))
        """,
        manager.env(),
    )
    assert result["value"] == manager.address
    assert [datagram.lines for datagram in manager.pending()] == [["READY=1"]]


# -- ready() under a service manager and under a shell -------------------------------


# Runs its arguments as a child (without passing PYTHONHOME on) and waits.
SPAWN = (
    "import os, subprocess, sys; env = dict(os.environ); env.pop('PYTHONHOME', None);"
    " sys.exit(subprocess.call(sys.argv[1:], env=env))"
)

# argv: REPORT, DaemonContext keywords (a Python expression). The same
# program serves under a service manager and from a shell.
SERVICE_BODY = """
kwargs = eval(sys.argv[2])
facts.report(REPORT + ".launcher")
launcher_pid = os.getpid()
with daemonkit.DaemonContext(**kwargs):
    with open(f"/proc/{os.getppid()}/comm") as comm:
        parent_comm = comm.read().strip()
    told = daemonkit.notify.status("loading")
    time.sleep(0.3)
    facts.report(REPORT, parent_comm=parent_comm, told=told, before_ready=time.monotonic())
    if kwargs.get("wait_ready"):
        daemonkit.ready("serving")
    if os.getpid() != launcher_pid:
        linger(30)  # a detached daemon serves until it is stopped
"""


def service(daemons: Daemons) -> tuple[list[str], Path]:
    """The command that runs SERVICE_BODY (keywords to append) and its report."""
    return daemons.script_command(SERVICE_BODY)


def reports(daemons: Daemons, launch: Launch, report: Path) -> tuple[dict[str, Any], ...]:
    """The launching process's facts and the with body's facts (pids tracked)."""
    return daemons.launcher_and_daemon(launch, report)


@pytest.mark.parametrize("wait_ready", [True, False], ids=["wait_ready", "no-wait_ready"])
def test_under_systemd_ready_reaches_the_manager_without_forking(
    daemons: Daemons, manager: FakeManager, systemd_python: list[str], wait_ready: bool
) -> None:
    command, report = service(daemons)
    keywords = repr({"wait_ready": wait_ready})
    launch = daemons.run(
        [*systemd_python, "-c", SPAWN, *command, keywords], env=manager.env(), timeout=20
    )
    launcher, body = reports(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert body["parent_comm"] == "systemd", "setup: the parent is not called systemd"
    assert body["pid"] == launcher["pid"], "the context forked under a service manager"
    assert body["told"] is True
    received = manager.pending()
    assert {datagram.sender for datagram in received} == {body["pid"]}
    if wait_ready:
        assert [datagram.lines for datagram in received] == [
            ["STATUS=loading"],
            ["READY=1", "STATUS=serving"],
        ]
    else:  # ready when the body is entered, before anything the body sends
        assert [datagram.lines for datagram in received] == [["READY=1"], ["STATUS=loading"]]


def test_from_a_shell_the_same_program_detaches_and_the_launcher_waits(
    daemons: Daemons,
) -> None:
    command, report = service(daemons)
    launch = daemons.run([*command, "{'wait_ready': True}"], env=clean_env(), timeout=20)
    exited = time.monotonic()
    launcher, body = reports(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert launcher["ppid"] == os.getpid()
    assert body["pid"] != launcher["pid"], "the context did not fork from a shell"
    assert body["sid"] != launcher["sid"]
    assert launch.elapsed >= 0.3
    assert exited >= body["before_ready"], "the launcher did not wait for ready()"
    # STATUS= before ready() is the launcher's progress output.
    assert body["told"] is True
    assert "daemonkit: loading\n" in launch.stderr.splitlines(keepends=True)
    assert is_alive(body["pid"])
    assert stop(body["pid"])


def test_status_lines_before_ready_are_shown_by_the_launcher(daemons: Daemons) -> None:
    launch, report = daemons.launch(
        """
with daemonkit.DaemonContext(wait_ready=True):
    told = [daemonkit.notify.status("loading")]
    time.sleep(0.2)
    told.append(daemonkit.notify.notify(status="warming caches"))
    facts.report(REPORT, told=told)
    daemonkit.ready()
    linger(30)
""",
        env=clean_env(),
    )
    assert launch.returncode == 0, launch.stderr
    lines = launch.stderr.splitlines()
    assert lines == ["daemonkit: loading", "daemonkit: warming caches"]
    data = daemons.read_report(report)
    assert data["told"] == [True, True]
    assert stop(data["pid"])


def test_detached_daemon_tells_both_the_launcher_and_the_manager(
    daemons: Daemons, manager: FakeManager
) -> None:
    """From a shell inside a service (NOTIFY_SOCKET inherited) ready() reaches both."""
    command, report = service(daemons)
    launch = daemons.run([*command, "{'wait_ready': True}"], env=manager.env(), timeout=20)
    launcher, body = reports(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert body["pid"] != launcher["pid"]
    assert "daemonkit: loading" in launch.stderr.splitlines()
    received = manager.pending()
    assert [datagram.lines for datagram in received] == [
        ["STATUS=loading"],
        ["READY=1", "STATUS=serving"],
    ]
    assert {datagram.sender for datagram in received} == {body["pid"]}
    assert stop(body["pid"])


# -- watchdog ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        pytest.param(None, None, None, id="unset"),
        pytest.param("0", None, None, id="zero"),
        pytest.param("500000", None, 0.5, id="no-pid"),
        pytest.param("500000", "self", 0.5, id="own-pid"),
        pytest.param("2500000", "self", 2.5, id="own-pid-2.5s"),
        pytest.param("500000", "other", None, id="other-pid"),
        pytest.param("500000", "garbage", None, id="garbage-pid"),
        pytest.param("soon", "self", None, id="garbage-usec"),
    ],
)
def test_watchdog_interval(
    daemons: Daemons, usec: str | None, pid: str | None, expected: float | None
) -> None:
    env = clean_env()
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if pid == "other":
        env["WATCHDOG_PID"] = str(os.getpid())  # the test runner: another process
    elif pid == "garbage":
        env["WATCHDOG_PID"] = "main"
    prefix = ["-c", SELF_PID_EXEC, "WATCHDOG_PID"] if pid == "self" else []
    _, result = run_child(
        daemons,
        """
        import json, os
        from daemonkit import notify
        print(json.dumps({"interval": notify.watchdog_interval(),
                          "pid": os.getpid(), "env": os.environ.get("WATCHDOG_PID")}))
        """,
        env,
        prefix,
    )
    if pid == "self":
        assert result["env"] == str(result["pid"]), "setup: WATCHDOG_PID is not our pid"
    assert result["interval"] == expected


def count_pings(datagrams: list[Datagram]) -> tuple[int, int]:
    """WATCHDOG=1 pings before and after the ``STATUS=left`` marker."""
    lines = [datagram.lines for datagram in datagrams]
    assert ["STATUS=left"] in lines, lines
    marker = lines.index(["STATUS=left"])
    others = [line for line in lines if line not in (["WATCHDOG=1"], ["STATUS=left"])]
    assert others == [["STATUS=end"]], others
    before = lines[:marker].count(["WATCHDOG=1"])
    after = lines[marker:].count(["WATCHDOG=1"])
    return before, after


@pytest.mark.parametrize("source", ["argument", "environment"])
def test_watchdog_thread_pings_at_half_the_interval(
    daemons: Daemons, manager: FakeManager, source: str
) -> None:
    if source == "argument":
        env, prefix, make = manager.env(), [], "notify.Watchdog(interval=0.2)"
    else:
        env = manager.env(WATCHDOG_USEC="200000")
        prefix, make = ["-c", SELF_PID_EXEC, "WATCHDOG_PID"], "notify.Watchdog()"
    _, result = run_child(
        daemons,
        f"""
        import json, threading, time
        from daemonkit import notify
        watchdog = {make}
        with watchdog:
            time.sleep(1.0)
            threads = threading.active_count()
        notify.status("left")
        threads_after = threading.active_count()
        time.sleep(0.5)
        notify.status("end")
        print(json.dumps({{"interval": watchdog.interval, "threads": threads,
                           "threads_after": threads_after}}))
        """,
        env,
        prefix,
    )
    assert result["interval"] == 0.2
    assert result["threads"] == 2
    assert result["threads_after"] == 1
    before, after = count_pings(manager.until("STATUS=end"))
    assert 6 <= before <= 14  # 1.0 s / 0.1 s, loosely
    assert after == 0, "the watchdog kept pinging after the with block"


def test_watchdog_can_be_started_again(daemons: Daemons, manager: FakeManager) -> None:
    run_child(
        daemons,
        """
        import json, time
        from daemonkit import notify
        watchdog = notify.Watchdog(interval=0.2)
        with watchdog:
            time.sleep(0.3)
        notify.status("paused")
        with watchdog:
            time.sleep(1.0)
        notify.status("left")
        notify.status("end")
        print(json.dumps({}))
        """,
        manager.env(),
    )
    lines = [datagram.lines for datagram in manager.until("STATUS=end")]
    pause = lines.index(["STATUS=paused"])
    left = lines.index(["STATUS=left"])
    assert 6 <= lines[pause:left].count(["WATCHDOG=1"]) <= 14


def test_watchdog_without_an_interval_does_nothing(daemons: Daemons, manager: FakeManager) -> None:
    _, result = run_child(
        daemons,
        """
        import json, threading, time
        from daemonkit import notify
        with notify.Watchdog() as watchdog:
            time.sleep(0.3)
            threads = threading.active_count()
        notify.status("end")
        print(json.dumps({"interval": watchdog.interval, "threads": threads}))
        """,
        manager.env(),
    )
    assert result == {"interval": None, "threads": 1}
    assert [datagram.lines for datagram in manager.pending()] == [["STATUS=end"]]


def test_watchdog_loop_as_an_asyncio_task(daemons: Daemons, manager: FakeManager) -> None:
    _, result = run_child(
        daemons,
        """
        import asyncio, json
        from daemonkit import notify

        async def main():
            task = asyncio.create_task(notify.watchdog_loop(0.2))
            await asyncio.sleep(1.0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            notify.status("left")
            await asyncio.sleep(0.5)
            notify.status("end")
            return task.cancelled()

        print(json.dumps({"cancelled": asyncio.run(main())}))
        """,
        manager.env(),
    )
    assert result == {"cancelled": True}
    before, after = count_pings(manager.until("STATUS=end"))
    assert 6 <= before <= 14
    assert after == 0, "the watchdog task kept pinging after it was cancelled"


def test_watchdog_loop_without_an_interval_returns(daemons: Daemons, manager: FakeManager) -> None:
    _, result = run_child(
        daemons,
        """
        import asyncio, json
        from daemonkit import notify
        asyncio.run(asyncio.wait_for(notify.watchdog_loop(), 5))
        print(json.dumps({"returned": True}))
        """,
        manager.env(),
    )
    assert result == {"returned": True}
    assert manager.pending() == []


@pytest.mark.parametrize("value", ["vsock:2:1234", "relative/notify.sock"])
def test_unsupported_notify_socket_forms_are_an_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A NOTIFY_SOCKET this client cannot speak to is reported, not silently dropped."""
    from daemonkit.notify import NotifyError, notify

    monkeypatch.setenv("NOTIFY_SOCKET", value)
    with pytest.raises(NotifyError, match="only absolute AF_UNIX paths"):
        notify("READY=1")
