"""daemonkit.pidfile.PIDFile on its own: lockfile's protocol, liveness, safe opening.

Holders live in other processes: a small script takes the lock, prints
``locked <pid>`` and then waits for a command on its standard input
(``release``), or releases, exits or dies (SIGKILL) by itself after a delay.
Every process is tracked by the ``daemons`` fixture and killed by PID after
the test; the holders are also killed and reaped through their Popen objects.

The protocol scenarios run against both ``daemonkit.pidfile.PIDFile`` and
``lockfile.pidlockfile.PIDLockFile`` where the two agree. Where they
deliberately differ (the lock, not the file, is the truth) one test shows
both sides:

- a file left by a dead process: locked for PIDLockFile (acquire fails,
  release says NotMyLock), stale for PIDFile (acquire takes it over,
  release says NotLocked);
- a holder killed in the middle of someone's wait: PIDLockFile's waiter
  times out, PIDFile's gets the lock;
- a file naming a live process that holds no lock (written by another tool):
  locked for PIDLockFile, "unverified" and taken over for PIDFile.
"""

from __future__ import annotations

import errno
import fcntl
import inspect
import json
import os
import select
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lockfile
import pytest
from conftest import Daemons, is_alive, wait_gone
from lockfile.pidlockfile import PIDLockFile
from test_validation import drop_to_nobody

import daemonkit
import daemonkit.pidfile
from daemonkit.pidfile import PIDFile, PIDStatus, TimeoutPIDLockFile, read_pid, status

KINDS: dict[str, Callable[..., Any]] = {"daemonkit": PIDFile, "lockfile": PIDLockFile}

HOLDER_SOURCE = """\
import json, os, signal, subprocess, sys, time

kind, path, *flags = sys.argv[1:]
if kind == "daemonkit":
    from daemonkit.pidfile import PIDFile as Lock
else:
    from lockfile.pidlockfile import PIDLockFile as Lock
lock = Lock(path)
if "--lock-only" in flags:
    lock.lock()  # daemonkit only: the lock, no pid written yet
else:
    lock.acquire()


def child_view():
    # What a process the holder forked thinks of the lock it inherited.
    view = {"i_am_locking": lock.i_am_locking(), "is_locked": lock.is_locked()}
    try:
        lock.release()
        view["release"] = "returned"
    except Exception as exc:
        view["release"] = [cls.__name__ for cls in type(exc).__mro__]
    with open(path + ".child.json.tmp", "w") as out:
        json.dump(view, out)
    os.rename(path + ".child.json.tmp", path + ".child.json")


if "--fork" in flags:
    child = os.fork()
    if child == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1):
            os.dup2(null, fd)
        child_view()
        while True:
            time.sleep(0.05)
    print("child", child, flush=True)
if "--exec" in flags:
    # close_fds=False: only close-on-exec can keep the lock from the child.
    proc = subprocess.Popen(["sleep", "60"], close_fds=False)
    print("child", proc.pid, flush=True)
print("locked", os.getpid(), flush=True)
for flag in flags:
    name, _, value = flag.partition("=")
    if name == "--release-after":
        time.sleep(float(value))
        lock.release()
        print("released", flush=True)
    elif name == "--exit-after":
        time.sleep(float(value))
        os._exit(0)
    elif name == "--die-after":
        time.sleep(float(value))
        os.kill(os.getpid(), signal.SIGKILL)
command = sys.stdin.readline().strip()
if command == "release":
    lock.release()
    print("released", flush=True)
    sys.stdin.readline()
# End of input: leave without releasing. A PIDLockFile's file stays behind;
# a PIDFile's lock goes with the process.
os._exit(0)
"""

# Another process tries to take the lock once, reports, and releases.
TRY_SOURCE = """\
import json, sys

kind, path, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
if kind == "daemonkit":
    from daemonkit.pidfile import PIDFile as Lock
else:
    from lockfile.pidlockfile import PIDLockFile as Lock
lock = Lock(path)
try:
    lock.acquire(timeout=timeout)
except Exception as exc:
    print(json.dumps({"outcome": type(exc).__name__, "message": str(exc)}))
    sys.exit(0)
with open(path) as pidfile:
    content = pidfile.read()
lock.release()
print(json.dumps({"outcome": "acquired", "content": content}))
"""


class Holder:
    """A process holding a pidfile lock (see HOLDER_SOURCE)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.child: int | None = None
        self.buffer = b""

    def read_line(self, timeout: float = 10.0) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                pytest.fail(f"holder {self.pid} said nothing within {timeout} s")
            chunk = os.read(fd, 4096)
            if not chunk:
                self.proc.wait(5)
                assert self.proc.stderr is not None
                pytest.fail(f"holder {self.pid} exited: {self.proc.stderr.read()!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode().strip()

    def expect(self, word: str) -> None:
        line = self.read_line()
        assert line.split()[0] == word, line

    def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()

    def release(self) -> None:
        self.command("release")
        self.expect("released")

    def exit(self) -> None:
        """End of input: the holder exits without releasing."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        assert self.proc.wait(10) == 0

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def child_view(self, path: Path) -> dict[str, Any]:
        result = Path(f"{path}.child.json")
        deadline = time.monotonic() + 10
        while not result.exists():
            assert time.monotonic() < deadline, "the holder's child did not report"
            time.sleep(0.01)
        view: dict[str, Any] = json.loads(result.read_text())
        return view


class Holders:
    def __init__(self, daemons: Daemons) -> None:
        self.daemons = daemons
        self.started: list[Holder] = []
        self.script = daemons.tmp_path / "holder.py"
        self.script.write_text(HOLDER_SOURCE)
        self.try_script = daemons.tmp_path / "try_lock.py"
        self.try_script.write_text(TRY_SOURCE)

    def start(self, kind: str, path: Path, *flags: str) -> Holder:
        """Start a holder; return once it holds the lock."""
        proc = subprocess.Popen(
            [sys.executable, str(self.script), kind, str(path), *flags],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self.daemons.track(proc.pid)
        holder = Holder(proc)
        self.started.append(holder)
        if "--fork" in flags or "--exec" in flags:
            line = holder.read_line()
            assert line.startswith("child "), line
            holder.child = int(line.split()[1])
            self.daemons.track(holder.child)
        line = holder.read_line()
        assert line == f"locked {proc.pid}", line
        return holder

    def try_lock(self, kind: str, path: Path, timeout: float) -> dict[str, Any]:
        """Have a third process try to acquire ``path``; return what happened."""
        done = self.daemons.run(
            [sys.executable, str(self.try_script), kind, str(path), str(timeout)],
            timeout=timeout + 20,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    def cleanup(self) -> None:
        for holder in self.started:
            if holder.proc.poll() is None:
                holder.proc.kill()
            holder.proc.wait(10)
            for stream in (holder.proc.stdin, holder.proc.stdout, holder.proc.stderr):
                if stream is not None:
                    stream.close()


@pytest.fixture
def holders(daemons: Daemons) -> Iterator[Holders]:
    tracker = Holders(daemons)
    try:
        yield tracker
    finally:
        tracker.cleanup()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "test.pid"


@pytest.fixture
def ours() -> Iterator[list[Any]]:
    """Locks taken in this process; released after the test if still held."""
    locks: list[Any] = []
    try:
        yield locks
    finally:
        for lock in locks:
            if lock.i_am_locking():
                lock.release()


def make(kind: str, path: Path, ours: list[Any], *args: Any, **kwargs: Any) -> Any:
    lock = KINDS[kind](str(path), *args, **kwargs)
    ours.append(lock)
    return lock


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


both = pytest.mark.parametrize("kind", sorted(KINDS))


# -- the exceptions and the alias --------------------------------------------


def test_exceptions_are_lockfiles_and_daemonkits() -> None:
    assert issubclass(daemonkit.AlreadyRunningError, lockfile.AlreadyLocked)
    assert issubclass(daemonkit.AlreadyRunningError, daemonkit.DaemonError)
    assert issubclass(daemonkit.PIDFileTimeoutError, lockfile.LockTimeout)
    assert issubclass(daemonkit.PIDFileTimeoutError, daemonkit.DaemonError)
    assert issubclass(daemonkit.PIDFileError, lockfile.LockFailed)
    assert issubclass(daemonkit.PIDFileError, daemonkit.DaemonError)
    # One class per name, wherever it is looked up.
    assert daemonkit.errors.AlreadyRunningError is daemonkit.AlreadyRunningError
    assert daemonkit.pidfile.AlreadyLocked is lockfile.AlreadyLocked
    assert daemonkit.pidfile.NotMyLock is lockfile.NotMyLock


def test_timeout_pid_lock_file_is_pidfile_with_python_daemons_signature() -> None:
    assert TimeoutPIDLockFile is PIDFile
    ours = inspect.signature(TimeoutPIDLockFile)
    expected = [
        ("path", inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.empty),
        ("acquire_timeout", inspect.Parameter.POSITIONAL_OR_KEYWORD, None),
        ("args", inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.empty),
        ("kwargs", inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty),
    ]
    assert [(p.name, p.kind, p.default) for p in ours.parameters.values()] == expected
    daemon_pidfile = pytest.importorskip("daemon.pidfile")
    theirs = inspect.signature(daemon_pidfile.TimeoutPIDLockFile)
    assert [(p.name, p.kind, p.default) for p in theirs.parameters.values()] == expected
    # The ways python-daemon users call it.
    assert TimeoutPIDLockFile("/run/x.pid", 5).acquire_timeout == 5
    assert TimeoutPIDLockFile("/run/x.pid", 2.5, False).acquire_timeout == 2.5
    assert TimeoutPIDLockFile("/run/x.pid", acquire_timeout=3).acquire_timeout == 3
    assert TimeoutPIDLockFile("/run/x.pid", threaded=False, timeout=4).acquire_timeout == 4
    assert TimeoutPIDLockFile(Path("/run/x.pid")).path == "/run/x.pid"


def test_acquire_timeout_is_the_default_for_acquire_and_with(
    holders: Holders, path: Path, ours: list[Any]
) -> None:
    holders.start("daemonkit", path)
    lock = make("daemonkit", path, ours, 0.3)
    began = time.monotonic()
    with pytest.raises(daemonkit.PIDFileTimeoutError):
        lock.acquire()
    assert time.monotonic() - began >= 0.25
    began = time.monotonic()
    with pytest.raises(daemonkit.PIDFileTimeoutError), lock:
        pytest.fail("entered a lock held by another process")
    assert time.monotonic() - began >= 0.25
    # Without a default, at once.
    plain = make("daemonkit", path, ours)
    with pytest.raises(daemonkit.AlreadyRunningError) as caught:
        plain.acquire()
    assert not isinstance(caught.value, lockfile.LockTimeout)


# -- lockfile's protocol, against both classes ---------------------------------


@both
def test_acquire_writes_our_pid_and_release_removes_the_file(
    kind: str, path: Path, ours: list[Any]
) -> None:
    lock = make(kind, path, ours)
    assert not lock.is_locked()
    assert not lock.i_am_locking()
    assert lock.read_pid() is None
    lock.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    assert lock.is_locked()
    assert lock.i_am_locking()
    assert lock.read_pid() == os.getpid()
    # Another object for the same path, in the same process, agrees.
    other = make(kind, path, ours)
    assert other.is_locked()
    assert other.read_pid() == os.getpid()
    lock.release()
    assert not path.exists()
    assert not lock.is_locked()
    assert not lock.i_am_locking()


@both
def test_with_statement_holds_the_lock_inside(kind: str, path: Path, ours: list[Any]) -> None:
    lock = make(kind, path, ours)
    with lock as entered:
        assert entered is lock
        assert lock.i_am_locking()
        assert path.read_text() == f"{os.getpid()}\n"
    assert not path.exists()
    assert not lock.is_locked()


@both
def test_release_without_the_lock_raises_not_locked(kind: str, path: Path, ours: list[Any]) -> None:
    lock = make(kind, path, ours)
    with pytest.raises(lockfile.NotLocked):
        lock.release()
    assert not path.exists()


@both
def test_release_of_another_process_lock_raises_not_my_lock(
    kind: str, holders: Holders, path: Path, ours: list[Any]
) -> None:
    holder = holders.start(kind, path)
    lock = make(kind, path, ours)
    assert lock.is_locked()
    assert not lock.i_am_locking()
    assert lock.read_pid() == holder.pid
    with pytest.raises(lockfile.NotMyLock):
        lock.release()
    assert path.read_text() == f"{holder.pid}\n"
    holder.release()
    assert not path.exists()


@both
@pytest.mark.parametrize("timeout", [None, 0, -1])
def test_acquire_of_a_held_lock_fails_at_once(
    kind: str, timeout: float | None, holders: Holders, path: Path, ours: list[Any]
) -> None:
    holder = holders.start(kind, path)
    lock = make(kind, path, ours)
    began = time.monotonic()
    with pytest.raises(lockfile.AlreadyLocked) as caught:
        lock.acquire(timeout=timeout)
    assert time.monotonic() - began < 2.0
    assert not isinstance(caught.value, lockfile.LockTimeout)
    assert not lock.i_am_locking()
    assert path.read_text() == f"{holder.pid}\n"


@both
def test_acquire_twice_in_one_process_is_already_locked(
    kind: str, path: Path, ours: list[Any]
) -> None:
    lock = make(kind, path, ours)
    lock.acquire()
    with pytest.raises(lockfile.AlreadyLocked):
        lock.acquire()
    assert lock.i_am_locking()
    assert path.read_text() == f"{os.getpid()}\n"
    lock.release()
    assert not path.exists()


@both
def test_acquire_with_a_timeout_raises_lock_timeout(
    kind: str, holders: Holders, path: Path, ours: list[Any]
) -> None:
    holder = holders.start(kind, path)
    lock = make(kind, path, ours)
    began = time.monotonic()
    with pytest.raises(lockfile.LockTimeout):
        lock.acquire(timeout=0.4)
    elapsed = time.monotonic() - began
    assert 0.35 <= elapsed < 10, elapsed
    assert not lock.i_am_locking()
    assert path.read_text() == f"{holder.pid}\n"


@both
def test_constructor_timeout_keyword_is_lockfiles(
    kind: str, holders: Holders, path: Path, ours: list[Any]
) -> None:
    holders.start(kind, path)
    lock = make(kind, path, ours, timeout=0.3)
    with pytest.raises(lockfile.LockTimeout):
        lock.acquire()


@pytest.mark.parametrize(
    ("kind", "ending"),
    [
        ("daemonkit", "release"),
        ("lockfile", "release"),
        # Only a PIDFile is freed by a holder that leaves without releasing
        # (see test_a_holder_killed_mid_wait_frees_a_pidfile_only).
        ("daemonkit", "exit"),
        ("daemonkit", "die"),
    ],
)
def test_a_waiter_gets_the_lock_when_the_holder_lets_go_mid_wait(
    kind: str, ending: str, holders: Holders, path: Path, ours: list[Any]
) -> None:
    holder = holders.start(kind, path, f"--{ending}-after=0.5")
    lock = make(kind, path, ours)
    began = time.monotonic()
    lock.acquire(timeout=20)
    elapsed = time.monotonic() - began
    # It waited for the holder, and not for the whole timeout.
    assert 0.2 < elapsed < 10, elapsed
    assert lock.i_am_locking()
    assert path.read_text() == f"{os.getpid()}\n"
    if ending != "release":
        assert holder.proc.wait(10) == (0 if ending == "exit" else -9)
    lock.release()


def test_a_wait_does_not_spin(holders: Holders, path: Path, ours: list[Any]) -> None:
    """Waiting for a held lock sleeps in the kernel: little CPU for a 1 s wait."""
    holders.start("daemonkit", path)
    lock = make("daemonkit", path, ours)
    before = os.times()
    with pytest.raises(lockfile.LockTimeout):
        lock.acquire(timeout=1.0)
    after = os.times()
    used = (after.user - before.user) + (after.system - before.system)
    assert used < 0.5, f"{used:.2f} s of CPU for a 1 s wait"


@pytest.mark.parametrize(
    ("kind", "ending"), [("daemonkit", "release"), ("daemonkit", "exit"), ("lockfile", "release")]
)
def test_an_expired_wait_leaves_no_lock_behind(
    kind: str, ending: str, holders: Holders, path: Path, ours: list[Any]
) -> None:
    """After our wait expired the holder lets go: a third process can lock it.

    "exit" leaves the file in place, so that a wait still going on behind the
    scenes in this process would meet the third process on the same file.
    """
    holder = holders.start(kind, path)
    lock = make(kind, path, ours)
    with pytest.raises(lockfile.LockTimeout):
        lock.acquire(timeout=0.3)
    if ending == "release":
        holder.release()
    else:
        holder.exit()
    assert not lock.i_am_locking()
    third = holders.try_lock(kind, path, timeout=5)
    assert third["outcome"] == "acquired", third
    assert not lock.i_am_locking()
    assert not lock.is_locked()


@both
def test_break_lock_removes_the_file_and_frees_the_path(
    kind: str, holders: Holders, path: Path, ours: list[Any]
) -> None:
    holders.start(kind, path)
    lock = make(kind, path, ours)
    lock.break_lock()
    assert not path.exists()
    assert not lock.is_locked()
    lock.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    lock.release()
    lock.break_lock()  # nothing there: no error


@both
@pytest.mark.parametrize(
    ("content", "expected"),
    [("4242\n", 4242), ("  4242  \n", 4242), ("4242", 4242), ("4242\nmore\n", 4242)],
)
def test_read_pid_is_flexible_in_what_it_accepts(
    kind: str, content: str, expected: int, path: Path, ours: list[Any]
) -> None:
    path.write_text(content)
    assert make(kind, path, ours).read_pid() == expected


@both
@pytest.mark.parametrize("content", ["", "\n", "garbage\n", "12x\n"])
def test_read_pid_of_no_number_is_none(
    kind: str, content: str, path: Path, ours: list[Any]
) -> None:
    path.write_text(content)
    assert make(kind, path, ours).read_pid() is None


@both
def test_a_process_the_holder_forks_is_not_locking(
    kind: str, holders: Holders, path: Path, ours: list[Any]
) -> None:
    holder = holders.start(kind, path, "--fork")
    view = holder.child_view(path)
    assert view == {
        "i_am_locking": False,
        "is_locked": True,
        "release": [
            "NotMyLock",
            "UnlockError",
            "Error",
            "Exception",
            "BaseException",
            "object",
        ],
    }
    # The child's attempt changed nothing: the holder still holds it.
    lock = make(kind, path, ours)
    assert lock.is_locked()
    assert path.read_text() == f"{holder.pid}\n"
    with pytest.raises(lockfile.AlreadyLocked):
        lock.acquire()


# -- where PIDFile deliberately differs from PIDLockFile ------------------------


def test_a_file_left_by_a_dead_process_is_locked_for_pidlockfile_only(
    daemons: Daemons, path: Path, ours: list[Any]
) -> None:
    pid = dead_pid()
    path.write_text(f"{pid}\n")
    theirs = make("lockfile", path, ours)
    mine = make("daemonkit", path, ours)
    assert theirs.is_locked()
    assert not mine.is_locked()
    with pytest.raises(lockfile.NotMyLock):
        theirs.release()
    with pytest.raises(lockfile.NotLocked):
        mine.release()
    with pytest.raises(lockfile.AlreadyLocked):
        theirs.acquire()
    mine.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    mine.release()


def test_a_holder_killed_mid_wait_frees_a_pidfile_only(
    holders: Holders, tmp_path: Path, ours: list[Any]
) -> None:
    results = {}
    for kind in sorted(KINDS):
        path = tmp_path / f"{kind}.pid"
        holders.start(kind, path, "--die-after=0.3")
        lock = make(kind, path, ours)
        try:
            lock.acquire(timeout=2)
            results[kind] = "acquired"
        except lockfile.LockTimeout:
            results[kind] = "timeout"
    assert results == {"daemonkit": "acquired", "lockfile": "timeout"}


def test_a_file_naming_a_live_unlocked_process_is_not_a_holder(
    daemons: Daemons, path: Path, ours: list[Any]
) -> None:
    sleeper = subprocess.Popen(["sleep", "30"])
    daemons.track(sleeper.pid)
    try:
        path.write_text(f"{sleeper.pid}\n")
        assert make("lockfile", path, ours).is_locked()
        found = status(path)
        assert found == PIDStatus(str(path), PIDStatus.UNVERIFIED, sleeper.pid)
        assert not found.running
        assert read_pid(path) is None
        mine = make("daemonkit", path, ours)
        assert not mine.is_locked()
        mine.acquire()
        assert path.read_text() == f"{os.getpid()}\n"
        assert status(path) == PIDStatus(str(path), PIDStatus.RUNNING, os.getpid())
        mine.release()
        assert is_alive(sleeper.pid), "taking over the file must not touch the process"
    finally:
        sleeper.kill()
        sleeper.wait()


# -- liveness is the lock ----------------------------------------------------------


def test_after_kill_9_the_file_is_stale_and_taken_over(
    holders: Holders, path: Path, ours: list[Any]
) -> None:
    holder = holders.start("daemonkit", path)
    assert status(path) == PIDStatus(str(path), PIDStatus.RUNNING, holder.pid)
    holder.kill()
    assert wait_gone(holder.pid)
    assert path.read_text() == f"{holder.pid}\n"
    found = status(path)
    assert found == PIDStatus(str(path), PIDStatus.STALE, holder.pid)
    assert not found.running
    assert read_pid(path) is None
    lock = make("daemonkit", path, ours)
    assert not lock.is_locked()
    lock.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    lock.release()


def test_a_stale_file_with_longer_content_is_rewritten_exactly(
    daemons: Daemons, path: Path, ours: list[Any]
) -> None:
    path.write_text(f"{dead_pid()}0000000\nsomething else\n")
    lock = make("daemonkit", path, ours)
    lock.acquire()
    assert path.read_bytes() == f"{os.getpid()}\n".encode()
    lock.release()


def test_status_absent(path: Path) -> None:
    assert status(path) == PIDStatus(str(path), PIDStatus.ABSENT, None)
    assert read_pid(path) is None


def test_status_starting_while_locked_without_a_pid(
    holders: Holders, path: Path, ours: list[Any]
) -> None:
    holder = holders.start("daemonkit", path, "--lock-only")
    found = status(path)
    assert found == PIDStatus(str(path), PIDStatus.STARTING, None)
    assert found.running
    assert read_pid(path) is None
    lock = make("daemonkit", path, ours)
    assert lock.is_locked()
    with pytest.raises(daemonkit.AlreadyRunningError, match="starting"):
        lock.acquire()
    assert path.read_text() == ""
    holder.kill()


def test_status_running_names_the_holder(holders: Holders, path: Path, ours: list[Any]) -> None:
    holder = holders.start("daemonkit", path)
    found = status(path)
    assert found == PIDStatus(str(path), PIDStatus.RUNNING, holder.pid)
    assert found.running
    assert read_pid(path) == holder.pid
    assert make("daemonkit", path, ours).holder() == found
    with pytest.raises(daemonkit.AlreadyRunningError) as caught:
        make("daemonkit", path, ours).acquire()
    assert f"pid {holder.pid}" in str(caught.value)
    assert str(path) in str(caught.value)


def test_status_of_our_own_lock(path: Path, ours: list[Any]) -> None:
    lock = make("daemonkit", path, ours)
    lock.lock()
    assert lock.holder() == PIDStatus(str(path), PIDStatus.STARTING, None)
    lock.write_pid()
    assert lock.holder() == PIDStatus(str(path), PIDStatus.RUNNING, os.getpid())
    assert read_pid(path) == os.getpid()
    lock.release()
    assert status(path) == PIDStatus(str(path), PIDStatus.ABSENT, None)


def test_status_stale_when_emptied(path: Path) -> None:
    path.write_text("")
    assert status(path) == PIDStatus(str(path), PIDStatus.STALE, None)


def test_status_stale_when_the_pid_is_a_zombie(daemons: Daemons, path: Path) -> None:
    proc = subprocess.Popen(["true"])
    try:
        deadline = time.monotonic() + 10
        while is_alive(proc.pid):  # exited but not reaped: a zombie
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert Path(f"/proc/{proc.pid}").exists()
        path.write_text(f"{proc.pid}\n")
        assert status(path) == PIDStatus(str(path), PIDStatus.STALE, proc.pid)
    finally:
        proc.wait()


# -- processes the holder starts do not keep the lock ---------------------------


@pytest.mark.parametrize("start", ["--fork", "--exec"])
@pytest.mark.parametrize("ending", ["exit", "kill"])
def test_children_of_the_holder_do_not_keep_the_lock(
    start: str, ending: str, holders: Holders, path: Path, ours: list[Any]
) -> None:
    holder = holders.start("daemonkit", path, start)
    child = holder.child
    assert child is not None
    # While the holder lives, its child's closing its copy changed nothing.
    if start == "--fork":
        holder.child_view(path)
    assert status(path) == PIDStatus(str(path), PIDStatus.RUNNING, holder.pid)
    if ending == "exit":
        holder.exit()
    else:
        holder.kill()
    assert wait_gone(holder.pid)
    assert is_alive(child)
    assert status(path).state == PIDStatus.STALE
    lock = make("daemonkit", path, ours)
    lock.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    assert is_alive(child)
    lock.release()


# -- safe opening ------------------------------------------------------------------


def refused(path: Path, *fragments: str) -> daemonkit.PIDFileError:
    """Acquire ``path``; check it fails with PIDFileError naming it and ``fragments``."""
    lock = PIDFile(path)
    with pytest.raises(daemonkit.PIDFileError) as caught:
        lock.acquire()
    message = str(caught.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message
    assert not lock.i_am_locking()
    return caught.value


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlink_is_refused_and_its_target_untouched(tmp_path: Path, dangling: bool) -> None:
    target = tmp_path / "target"
    link = tmp_path / "link.pid"
    if not dangling:
        target.write_text("precious\n")
        os.utime(target, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
        before = target.stat()
    link.symlink_to(target)
    refused(link, "symbolic link")
    assert link.is_symlink()
    if dangling:
        assert not target.exists()
        assert not os.path.lexists(target)
    else:
        after = target.stat()
        assert target.read_text() == "precious\n"
        assert after.st_mtime_ns == before.st_mtime_ns
        assert (after.st_ino, after.st_mode, after.st_uid) == (
            before.st_ino,
            before.st_mode,
            before.st_uid,
        )
        assert status(target).state == PIDStatus.STALE  # not locked either
    PIDFile(link).break_lock()
    assert link.is_symlink(), "break_lock removes only a regular file"


@pytest.mark.timeout(10)
def test_a_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.pid"
    os.mkfifo(fifo)
    refused(fifo, "not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert PIDFile(fifo).read_pid() is None


def test_a_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "dir.pid"
    folder.mkdir()
    refused(folder, "directory")
    assert folder.is_dir()


def test_a_file_with_two_hard_links_is_refused(tmp_path: Path) -> None:
    original = tmp_path / "original"
    original.write_text("1\n")
    linked = tmp_path / "linked.pid"
    os.link(original, linked)
    refused(linked, "2 hard links")
    assert original.read_text() == "1\n"
    assert linked.stat().st_nlink == 2


def test_a_directory_writable_by_others_needs_the_sticky_bit(
    shared_dir: Path, ours: list[Any]
) -> None:
    open_dir = shared_dir / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    path = open_dir / "x.pid"
    refused(path, str(open_dir), "sticky")
    assert not path.exists()
    open_dir.chmod(0o1777)
    lock = make("daemonkit", path, ours)
    lock.acquire()
    assert path.read_text() == f"{os.getpid()}\n"
    lock.release()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_a_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "theirs.pid"
    path.write_text("1\n")
    os.chown(path, 65534, 65534)
    refused(path, "owned by uid 65534")
    assert path.read_text() == "1\n"
    assert path.stat().st_uid == 65534


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    refused(missing / "x.pid", str(missing), "No such file or directory")
    assert not missing.exists()


NOBODY_TRY = """\
import json, threading
import daemonkit.pidfile
from daemonkit.errors import AlreadyRunningError, PIDFileError, PIDFileTimeoutError
path, out_path = sys.argv[2], sys.argv[3]
DROP
try:
    daemonkit.pidfile.PIDFile(path).acquire()
    result = {"outcome": "acquired"}
except Exception as exc:
    result = {"outcome": type(exc).__name__, "message": str(exc),
              "mro": [cls.__name__ for cls in type(exc).__mro__]}
with open(out_path, "w") as out:
    json.dump(result, out)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to nobody needs root")
@pytest.mark.parametrize("case", ["create", "open existing", "directory not searchable"])
def test_no_permission_is_a_clear_pidfile_error(
    daemons: Daemons, shared_dir: Path, case: str
) -> None:
    """An unprivileged process (root that dropped to nobody first) is told why."""
    shared_dir.chmod(0o1777)  # nobody writes its report here
    report = shared_dir / "report.json"
    folder = shared_dir / "private"
    folder.mkdir(mode=0o755)
    path = folder / "x.pid"
    if case == "open existing":
        path.write_text("1\n")
    elif case == "directory not searchable":
        folder.chmod(0o700)
    body = NOBODY_TRY.replace("DROP", drop_to_nobody())
    done, _ = daemons.launch(body, args=[str(path), str(report)])
    assert done.returncode == 0, done.stderr
    result = json.loads(report.read_text())
    assert result["outcome"] == "PIDFileError", result
    assert "LockFailed" in result["mro"]
    assert str(path) in result["message"]
    assert "Permission denied" in result["message"]
    if case == "open existing":
        assert path.read_text() == "1\n"
    else:
        assert not path.exists()


def test_a_read_only_filesystem_is_named(tmpfs: Callable[[str], Path]) -> None:
    where = tmpfs("ro,size=64k,mode=0755")
    path = where / "x.pid"
    refused(path, "read-only")
    assert not path.exists()


def test_an_existing_pidfile_on_a_read_only_filesystem_is_left_alone(
    tmpfs: Callable[[str], Path],
) -> None:
    where = tmpfs("size=64k,mode=0755")
    path = where / "x.pid"
    path.write_text("4242\n")
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    refused(path, "read-only")
    assert path.read_text() == "4242\n"


def fill(where: Path) -> None:
    """Write zeros into ``where`` until the file system is full."""
    fd = os.open(where / "zeros", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(OSError) as caught:
            while True:
                os.write(fd, bytes(65536))
        assert caught.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_full_filesystem_is_a_pidfile_error(tmpfs: Callable[[str], Path]) -> None:
    # tmpfs still gives a full file system new (empty) files: what fails is
    # writing the pid.
    where = tmpfs("size=64k,mode=0755")
    fill(where)
    path = where / "x.pid"
    lock = PIDFile(path)
    try:
        with pytest.raises(daemonkit.PIDFileError) as caught:
            lock.acquire()
        message = str(caught.value)
        assert str(path) in message
        assert "No space left on device" in message
        assert "full" in message
    finally:
        if lock.i_am_locking():
            lock.release()  # (see the next test) so that it can be unmounted


def test_a_failed_acquire_leaves_no_lock_and_no_file(tmpfs: Callable[[str], Path]) -> None:
    where = tmpfs("size=64k,mode=0755")
    fill(where)
    path = where / "x.pid"
    lock = PIDFile(path)
    try:
        with pytest.raises(daemonkit.PIDFileError):
            lock.acquire()
        assert not lock.i_am_locking()
        assert status(path) == PIDStatus(str(path), PIDStatus.ABSENT, None)
    finally:
        if lock.i_am_locking():
            lock.release()


# -- what a new file looks like --------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077, 0o777])
def test_a_new_file_has_mode_0644_whatever_the_umask(
    umask: int, path: Path, ours: list[Any]
) -> None:
    lock = make("daemonkit", path, ours)
    old = os.umask(umask)
    try:
        lock.acquire()
    finally:
        os.umask(old)
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o644
    assert st.st_uid == os.geteuid()
    assert path.read_bytes() == f"{os.getpid()}\n".encode()
    lock.release()


def test_the_lock_is_an_exclusive_flock_on_the_file(path: Path, ours: list[Any]) -> None:
    """What other tools (flock(1), systemd's PIDFile= readers) can check for themselves."""
    lock = make("daemonkit", path, ours)
    lock.acquire()
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    lock.release()


PROBER_SOURCE = """\
import json, sys, time
from daemonkit.pidfile import read_pid, status

path, seconds = sys.argv[1], float(sys.argv[2])
seen = {}
print("probing", flush=True)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    found = status(path)
    key = f"{found.state} {found.pid}"
    seen[key] = seen.get(key, 0) + 1
    key = f"read_pid {read_pid(path)}"
    seen[key] = seen.get(key, 0) + 1
print(json.dumps(seen), flush=True)
"""


def cycle_under_probes(
    daemons: Daemons, path: Path, ours: list[Any], stale: str
) -> tuple[list[str], int, list[dict[str, int]]]:
    """Start and stop (acquire, release) over and over while 3 processes probe.

    Before each start the file is rewritten with ``stale`` content, as a
    crash leaves it. Returns the start failures, the number of starts, and
    what each prober saw (``"<state> <pid>"`` and ``"read_pid <pid>"`` counts).
    """
    prober = daemons.tmp_path / "prober.py"
    prober.write_text(PROBER_SOURCE)
    procs = [
        subprocess.Popen(
            [sys.executable, str(prober), str(path), "2.5"], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    try:
        for proc in procs:
            daemons.track(proc.pid)
            assert proc.stdout is not None
            assert proc.stdout.readline() == "probing\n"
        failures: list[str] = []
        starts = 0
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            path.write_text(stale)
            lock = make("daemonkit", path, ours)
            try:
                lock.acquire()
            except lockfile.Error as exc:
                failures.append(repr(exc))
                continue
            starts += 1
            lock.release()
        seen = []
        for proc in procs:
            out, _ = proc.communicate(timeout=10)
            seen.append(json.loads(out))
        return failures, starts, seen
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def test_status_probes_never_make_a_start_fail(
    daemons: Daemons, path: Path, ours: list[Any]
) -> None:
    """status() on an unlocked file takes a shared lock for an instant (when
    /proc/locks shows none); a starter that meets it must retry, not report
    "already running"."""
    failures, starts, seen = cycle_under_probes(daemons, path, ours, "")
    assert failures == []
    assert starts > 10
    for counts in seen:
        assert sum(counts.values()) > 20


def test_status_never_reports_a_pid_that_does_not_hold_the_lock(
    daemons: Daemons, path: Path, ours: list[Any]
) -> None:
    dead = dead_pid()
    _, starts, seen = cycle_under_probes(daemons, path, ours, f"{dead}\n")
    assert starts > 10
    me = os.getpid()
    wrong = {
        key: count
        for counts in seen
        for key, count in counts.items()
        if key.split()[0] in ("running", "starting", "read_pid")
        and key.split()[1] not in ("None", str(me))
    }
    assert wrong == {}, f"the only holder was {me}; {dead} was dead"
