"""A pidfile whose truth is a lock, not the file's existence.

The classic pidfile is created with ``O_EXCL`` and deleted at exit; after a
crash or ``kill -9`` it stays, blocks the next start, or names a pid the
kernel has since given to another process. :class:`PIDFile` instead holds an
exclusive ``flock`` on the file for the daemon's whole life:

- a lock cannot outlive its holder, so a file left by a crash is unlocked,
  hence stale, and the next start takes it over without manual cleanup;
- ``flock`` belongs to the open file description, so the launcher can take it
  before forking (deciding "already running" on the spot) and hand it down to
  the daemon, and, unlike POSIX record locks, closing some other descriptor
  of the file does not drop it;
- the content (``"<pid>\\n"``) is written by the daemon itself and trusted
  only while the lock is held.

It speaks lockfile's ``LockBase`` protocol and raises its exceptions, so it
replaces ``lockfile.pidlockfile.PIDLockFile`` and python-daemon's
``TimeoutPIDLockFile`` (an alias here). As with ``PIDLockFile``,
``acquire()`` without a timeout fails at once when the file is locked.
"""

from __future__ import annotations

import errno
import os
import stat
import time
import weakref

from . import _flock, _pidopen, _posix
from ._lazy import errors

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from typing import Any, NoReturn

    from lockfile import AlreadyLocked, LockFailed, LockTimeout, NotLocked, NotMyLock


__all__ = [
    "PIDFile",
    "PIDStatus",
    "TimeoutPIDLockFile",
    "read_pid",
    "status",
]

__all__ += ["AlreadyLocked", "LockFailed", "LockTimeout", "NotLocked", "NotMyLock"]

# lockfile's exceptions, re-exported. lockfile itself (which imports socket
# and threading: about 10 ms and 1 MiB in every daemon) is imported only when
# one of them is needed: raised, caught or looked up here.
_LOCKFILE_NAMES = frozenset(
    {"AlreadyLocked", "LockFailed", "LockTimeout", "NotLocked", "NotMyLock"}
)


def __getattr__(name: str) -> object:
    if name in _LOCKFILE_NAMES:
        import lockfile

        return getattr(lockfile, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


MODE = 0o644
# Seconds to let a passing state settle (a daemon exiting, a start taking
# over a stale file) before judging it a lasting one.
SETTLE = 0.05
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
_HELD: weakref.WeakSet[PIDFile] = weakref.WeakSet()
_hook_registered = False


def _close_in_child() -> None:
    """after_in_child: processes the holder forks must not keep the lock."""
    for pidfile in list(_HELD):
        if not pidfile._handing_down:
            pidfile._forget()
    _flock.close_waiters()


def _ensure_fork_hook() -> None:
    global _hook_registered
    if not _hook_registered:
        os.register_at_fork(after_in_child=_close_in_child)
        _hook_registered = True


def _parse_pid(data: bytes) -> int | None:
    """The pid on the first line of a pidfile's content, None if there is none."""
    try:
        pid = int(data.split(b"\n", 1)[0].strip())
    except ValueError:
        return None
    return pid if pid > 0 else None


class PIDStatus:
    """What a pidfile says, judged by its lock.

    ``state`` is one of ``ABSENT`` (no file), ``STALE`` (no lock: left by a
    crash, or emptied), ``STARTING`` (locked, pid not yet written),
    ``RUNNING`` (locked: ``pid`` is the live holder), ``UNVERIFIED`` (no
    lock but the pid is alive: a pidfile written by another tool, or a pid
    the kernel reused; never signal it on this evidence) or ``UNKNOWN`` (the
    path cannot be judged: not a regular file, no permission; ``reason``
    says why).
    """

    ABSENT = "absent"
    STALE = "stale"
    STARTING = "starting"
    RUNNING = "running"
    UNVERIFIED = "unverified"
    UNKNOWN = "unknown"

    def __init__(self, path: str, state: str, pid: int | None, reason: str = "") -> None:
        self.path = path
        self.state = state
        self.pid = pid
        self.reason = reason

    @property
    def running(self) -> bool:
        """True when a live process holds the lock."""
        return self.state in (self.RUNNING, self.STARTING)

    def __repr__(self) -> str:
        return f"PIDStatus({self.path!r}, state={self.state!r}, pid={self.pid!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PIDStatus):
            return NotImplemented
        return (self.path, self.state, self.pid) == (other.path, other.state, other.pid)

    __hash__ = None  # type: ignore[assignment]


class PIDFile:
    """A lock-backed pidfile; lockfile's ``LockBase`` protocol.

    It speaks the protocol without inheriting from ``LockBase``: importing
    lockfile (which imports socket and threading) would cost every daemon
    about 10 ms and 1 MiB; it is imported only when one of its exceptions
    is raised.

    ``acquire_timeout`` is the default for :meth:`acquire` (seconds; None or
    <= 0: fail at once with ``AlreadyLocked`` when another process holds it;
    > 0: wait that long, then ``LockTimeout``). Extra positional and keyword
    arguments (lockfile's ``threaded``, ``timeout``) are accepted for
    compatibility.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        acquire_timeout: float | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> None:
        # The attributes LockBase.__init__ would set, without its host name
        # lookup (for the separate ".lock" files lockfile's other classes use).
        self.path = os.fsdecode(os.fspath(path))
        self.lock_file = self.unique_name = self.path
        if acquire_timeout is None:
            acquire_timeout = kwargs.get("timeout")
        self.acquire_timeout = acquire_timeout
        self.timeout = acquire_timeout
        self._fd: int | None = None
        self._owner: int | None = None
        self._created = False
        self._handing_down = False

    # -- lockfile protocol --------------------------------------------------

    def acquire(self, timeout: float | None = None, *args: Any, **kwargs: Any) -> None:
        """Take the lock and write this process's pid into the file.

        If the pid cannot be written (a full disk), the lock is given up and
        a file this call created is removed again before the error is raised.
        """
        self.lock(self.acquire_timeout if timeout is None else timeout)
        try:
            self.write_pid()
        except BaseException:
            self.abandon()
            raise

    def abandon(self) -> None:
        """Give up a lock this process took but never used: remove what we made."""
        if not self._holding():
            return
        fd = self._fd
        assert fd is not None
        if self._created and self._same_file(fd):
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self._forget()

    def release(self) -> None:
        """Remove (or, without the right to, empty) the file and drop the lock."""
        if not self._holding():
            if self.is_locked():
                from lockfile import NotMyLock

                raise NotMyLock(f"{self.path} is locked, but not by this process")
            from lockfile import NotLocked

            raise NotLocked(f"{self.path} is not locked")
        fd = self._fd
        assert fd is not None
        # Unlink first, so that a reader who opened the file before sees it
        # gone rather than locked and empty (which reads as "starting"). Then
        # empty it through the descriptor (which works after chroot or a
        # privilege drop), so a reader never sees our pid unlocked.
        if self._same_file(fd):
            try:
                os.unlink(self.path)
            except OSError:
                pass  # no right to remove it: the empty, unlocked file is stale
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        self._forget()

    def is_locked(self) -> bool:
        """True while some live process holds the lock."""
        if self.i_am_locking():
            return True
        return _flock.probe_locked(self.path)

    def i_am_locking(self) -> bool:
        """True if this process holds the lock on the file now at ``path``."""
        return self._holding() and self._same_file(self._fd)  # type: ignore[arg-type]

    def break_lock(self) -> None:
        """Remove the file, whoever holds it (lockfile's semantics).

        A holder keeps a lock on the removed file; the next start creates a
        new one. Use only when the holder is known to be wrong.
        """
        if self._holding():
            self._forget()
        try:
            if stat.S_ISREG(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def read_pid(self) -> int | None:
        """The pid written in the file, unverified; None if none can be read."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return _parse_pid(os.read(fd, 64))
        except OSError:
            return None
        finally:
            os.close(fd)

    def __enter__(self) -> PIDFile:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"<PIDFile: {self.path!r}>"

    # -- beyond the protocol ------------------------------------------------

    def holder(self) -> PIDStatus:
        """Who holds the pidfile: see :class:`PIDStatus`.

        Everything is judged on one open descriptor: lock, content, lock
        again, and that the file is still the one at ``path``. A pid is
        reported running only if that process really holds the lock (where
        we may look), so the previous owner's pid, still in a file a new
        start has just locked, is never taken for the holder, nor is a
        process that got a dead daemon's pid and has the file open.
        """
        if self.i_am_locking():
            pid = self.read_pid()
            return PIDStatus(self.path, PIDStatus.RUNNING if pid else PIDStatus.STARTING, pid)
        found = self._look()
        deadline = time.monotonic() + SETTLE
        while not isinstance(found, PIDStatus):
            # Locked, but not by the pid written in it. For an instant that is
            # a start taking over a stale file, or the daemon exiting; if it
            # lasts, a process the dead daemon left behind holds the lock.
            if time.monotonic() >= deadline:
                return self._orphaned(*found)
            time.sleep(0.002)
            found = self._look()
        return found

    def _look(self) -> PIDStatus | tuple[int, os.stat_result]:
        """One look; ``(pid, stat)`` if locked by someone other than ``pid``."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return PIDStatus(self.path, PIDStatus.ABSENT, None)
        except OSError as exc:
            return PIDStatus(self.path, PIDStatus.UNKNOWN, None, f"cannot open: {exc.strerror}")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return PIDStatus(self.path, PIDStatus.UNKNOWN, None, "not a regular file")
            locked = _flock.lock_held(fd)
            pid = _parse_pid(os.pread(fd, 64, 0))
            locked = locked and _flock.lock_held(fd) and self._same_file(fd)
        except OSError as exc:
            return PIDStatus(self.path, PIDStatus.UNKNOWN, None, exc.strerror or str(exc))
        finally:
            os.close(fd)
        if locked:
            if pid is None:
                return PIDStatus(self.path, PIDStatus.STARTING, None)
            if _flock.pid_alive(pid) and _flock.holds_lock(pid, st) is not False:
                return PIDStatus(self.path, PIDStatus.RUNNING, pid)
            return pid, st
        if pid is not None and _flock.pid_alive(pid):
            # Unlocked, yet alive: a reused pid, or the daemon itself in the
            # instant between closing its files and becoming a zombie.
            if _posix.exits_within(pid, SETTLE):
                return PIDStatus(self.path, PIDStatus.STALE, pid)
            return PIDStatus(self.path, PIDStatus.UNVERIFIED, pid)
        return PIDStatus(self.path, PIDStatus.STALE, pid)

    def _orphaned(self, pid: int, st: os.stat_result) -> PIDStatus:
        """The daemon ``pid`` is gone; a process it left behind holds the lock.

        Unless the holder is the daemon seen from another PID namespace (a
        container sharing the pidfile's directory): its innermost pid is the
        one written in the file.
        """
        holders = _flock.lock_owners(st)
        for holder in holders:
            if _flock.innermost_pid(holder) == pid:
                return PIDStatus(self.path, PIDStatus.RUNNING, holder)
        owners = ", ".join(map(str, holders))
        return PIDStatus(
            self.path,
            PIDStatus.STALE,
            pid,
            f"the daemon (pid {pid}) is gone, but another process still holds the lock "
            f"(pid {owners or '?'}, perhaps a child it left behind; fuser {self.path} "
            "names it): stop that process, then start again",
        )

    def lock(self, timeout: float | None = None) -> None:
        """Take the lock without writing a pid (the daemon writes it later).

        Empties a stale file so its old pid is never mistaken for ours.
        Raises :class:`~daemonkit.AlreadyRunningError` (a lockfile
        ``AlreadyLocked``) when another process holds it and ``timeout`` is
        None or <= 0, ``PIDFileTimeoutError`` (a ``LockTimeout``) when the
        wait expires, :class:`~daemonkit.PIDFileError` (a ``LockFailed``)
        when the file cannot safely be opened.
        """
        if self._holding():
            raise errors.AlreadyRunningError(f"{self.path} is already locked by this process")
        _pidopen.check_directory(self.path)
        deadline = time.monotonic() + timeout if timeout is not None and timeout > 0 else None
        while True:
            fd, created = _pidopen.open_pidfile(self.path, _OPEN_FLAGS, MODE)
            try:
                locked = _flock.try_lock(fd) or (
                    deadline is not None and _flock.wait_lock(fd, deadline)
                )
            except BaseException:
                os.close(fd)
                raise
            if not locked and deadline is None and not self._held_by_its_pid():
                locked = self._lock_settles(fd)
            if not locked:
                os.close(fd)
                self._raise_held(timeout)
            if self._same_file(fd):
                break
            os.close(fd)  # removed or replaced while we waited: lock the new one
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, b"", 0)  # fails where a pid could not be written (procfs)
        except OSError as exc:
            os.close(fd)
            raise self._error("cannot empty", exc) from exc
        self._fd, self._owner, self._created = fd, os.getpid(), created
        _HELD.add(self)
        _ensure_fork_hook()

    def write_pid(self, pid: int | None = None) -> None:
        """Write ``pid`` (default: this process) as the file's whole content."""
        if not self._holding():
            from lockfile import NotLocked

            raise NotLocked(f"{self.path} is not locked by this process")
        fd = self._fd
        assert fd is not None
        data = f"{os.getpid() if pid is None else pid}\n".encode()
        try:
            os.ftruncate(fd, 0)
            if os.pwrite(fd, data, 0) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:
            raise self._error("cannot write the pid to", exc) from exc

    def fileno(self) -> int:
        """The locked descriptor (for files_preserve-style bookkeeping)."""
        if self._fd is None:
            from lockfile import NotLocked

            raise NotLocked(f"{self.path} is not locked")
        return self._fd

    # -- internals ------------------------------------------------------------

    def _holding(self) -> bool:
        return self._fd is not None and self._owner == os.getpid()

    def _forget(self) -> None:
        """Close our descriptor; in the owner this drops the lock."""
        fd, self._fd, self._owner = self._fd, None, None
        _HELD.discard(self)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def _adopt(self) -> None:
        """In the daemon after the final fork: the inherited lock is ours."""
        self._handing_down = False
        if self._fd is not None:
            self._owner = os.getpid()

    def _same_file(self, fd: int) -> bool:
        return _pidopen.same_file(self.path, fd)

    def _error(self, action: str, exc: OSError) -> errors.PIDFileError:
        return _pidopen.error(self.path, action, exc)

    def _held_by_its_pid(self) -> bool:
        """True if the pid written in the file holds its lock (no point waiting)."""
        found = self._look()
        return isinstance(found, PIDStatus) and found.state == PIDStatus.RUNNING

    @staticmethod
    def _lock_settles(fd: int) -> bool:
        """Take a lock that was held only for an instant (a stop removing a stale file)."""
        until = time.monotonic() + SETTLE
        while time.monotonic() < until:
            time.sleep(0.002)
            if _flock.try_lock(fd):
                return True
        return False

    def _raise_held(self, timeout: float | None) -> NoReturn:
        found = self.holder()
        if found.state == PIDStatus.STALE and found.reason:
            raise errors.PIDFileError(f"pidfile {self.path}: {found.reason}")
        pid = found.pid if found.state == PIDStatus.RUNNING else None
        who = f"running as pid {pid}" if pid else "starting (no pid written yet)"
        if timeout is not None and timeout > 0:
            raise errors.PIDFileTimeoutError(
                f"{self.path} is locked: the daemon is already {who}; "
                f"still locked after {timeout:g} s"
            )
        raise errors.AlreadyRunningError(f"{self.path} is locked: the daemon is already {who}")


TimeoutPIDLockFile = PIDFile


def status(path: str | os.PathLike[str]) -> PIDStatus:
    """The state of the pidfile at ``path``: see :class:`PIDStatus`."""
    return PIDFile(path).holder()


def read_pid(path: str | os.PathLike[str]) -> int | None:
    """The pid of the live holder of the pidfile at ``path``, or None."""
    found = status(path)
    return found.pid if found.state == PIDStatus.RUNNING else None
