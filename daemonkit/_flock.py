"""flock(2) helpers for the pidfile: try, wait with a deadline, and look.

Looking at a lock takes a shared lock for an instant. A starter that meets
such a probe retries briefly rather than reporting "already running": only
then does it read ``/proc/locks`` (which tells granted locks apart without
taking any, but costs milliseconds) to see that the lock is a probe's.
"""

from __future__ import annotations

import fcntl
import os
import time

from . import _posix

_WAITER_FDS: set[int] = set()


def close_waiters() -> None:
    """In a forked child: drop the descriptors of lock waits in progress."""
    for fd in list(_WAITER_FDS):
        _WAITER_FDS.discard(fd)
        try:
            os.close(fd)
        except OSError:
            pass


def pid_alive(pid: int) -> bool:
    """True if a process ``pid`` exists and is not a zombie awaiting its reaper."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[:1] != [b"Z"]
    except OSError:
        return True  # no /proc: trust kill()


def flock_kinds(st: os.stat_result) -> set[str] | None:
    """Kinds ("WRITE"/"READ") of flock locks granted on the file, None if unknown."""
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as table:
            lines = table.read().splitlines()
    except OSError:
        return None
    kinds = set()
    for line in lines:
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == key:
            kinds.add(parts[3])
    return kinds


def lock_held(fd: int) -> bool:
    """True if some process holds an exclusive lock on ``fd``'s file.

    Asked by trying a shared lock for an instant: two system calls, where
    reading ``/proc/locks`` costs milliseconds on a busy kernel. A starter
    that meets such a probe retries briefly (:func:`try_lock`).
    """
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def probe_locked(path: str) -> bool:
    """True if someone holds an exclusive lock on the file at ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return lock_held(fd)
    finally:
        os.close(fd)


def holds_lock(pid: int, st: os.stat_result) -> bool | None:
    """Whether process ``pid`` holds the flock on the file ``st``; None if we may not look.

    Having the file open is not enough: a process that got a dead daemon's
    pid may have it open too, without the lock. The lock belongs to the
    open file description, which ``/proc/PID/fdinfo/N`` lists it under.
    """
    folder = f"/proc/{pid}"
    try:
        names = os.listdir(f"{folder}/fd")
    except FileNotFoundError:
        return False
    except OSError:
        return None
    for name in names:
        try:
            target = os.stat(f"{folder}/fd/{name}")
            if (target.st_dev, target.st_ino) != (st.st_dev, st.st_ino):
                continue
            with open(f"{folder}/fdinfo/{name}") as info:
                details = info.read()
        except FileNotFoundError:
            continue
        except OSError:
            return None
        for line in details.splitlines():
            if line.startswith("lock:") and "FLOCK" in line and "WRITE" in line:
                return True
    return False


def lock_owners(st: os.stat_result) -> list[int]:
    """Pids of the processes that hold the flock on the file ``st``.

    Scans every process in ``/proc`` (those we may look at): milliseconds,
    so only for explaining a lock whose holder is not the pid in the file.
    """
    owners = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid() and holds_lock(int(entry), st):
            owners.append(int(entry))
    return owners


def innermost_pid(pid: int) -> int | None:
    """Process ``pid``'s pid in its own (innermost) PID namespace, if known."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return None


def try_lock(fd: int) -> bool:
    """Take the exclusive lock without waiting for a holder; False if held."""
    for _ in range(50):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        # Held. By a daemon (an exclusive lock), or only for an instant
        # by a status probe (a shared one)? Retry briefly in that case.
        kinds = flock_kinds(os.fstat(fd))
        if kinds is None or "WRITE" in kinds:
            return False
        time.sleep(0.001)
    return False


def wait_lock(fd: int, deadline: float) -> bool:
    """Block on the lock until ``deadline``, in a helper thread.

    ``flock`` has no timeout; a blocking call in a thread, abandoned at
    the deadline, waits without polling. The thread works on its own
    duplicate of the descriptor: if it gets the lock after we gave up, it
    closes that duplicate, and with it the lock.
    """
    import threading

    waiter_fd = os.dup(fd)
    _WAITER_FDS.add(waiter_fd)
    done = threading.Event()
    guard = threading.Lock()
    state = {"locked": False}

    def wait() -> None:
        try:
            fcntl.flock(waiter_fd, fcntl.LOCK_EX)
            locked = True
        except OSError:
            locked = False
        with guard:
            state["locked"] = locked
            if waiter_fd in _WAITER_FDS:
                _WAITER_FDS.discard(waiter_fd)
                os.close(waiter_fd)
        done.set()

    threading.Thread(target=wait, name="daemonkit-pidfile-wait", daemon=True).start()
    while not done.wait(min(max(0.0, deadline - time.monotonic()), _posix.MAX_WAIT)):
        if time.monotonic() >= deadline:
            break
    with guard:  # the thread's verdict, if it came before the deadline
        return state["locked"]
