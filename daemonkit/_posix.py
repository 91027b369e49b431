"""Thin, typed wrappers over the operating system calls daemonkit needs.

Everything that is specific to Linux (or to POSIX) lives here, so that a port
to another Unix touches one module. Nothing else in the package calls
``os.fork`` directly. Failures are raised as daemonkit exceptions whose
message names the call and the object involved.
"""

from __future__ import annotations

import errno
import os
import resource
import stat
import sys
import time

from ._lazy import errors

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any, NoReturn


CAP_SETGID = 6
CAP_SETUID = 7
CAP_SYS_CHROOT = 18


def fork(purpose: str) -> int:
    """Fork, raising :class:`~daemonkit.errors.DaemonProcessDetachError` naming ``purpose``."""
    try:
        return os.fork()
    except OSError as exc:
        raise errors.DaemonProcessDetachError(
            exc.errno, f"cannot fork ({purpose}): {exc.strerror}"
        ) from exc


def new_session() -> None:
    """Become the leader of a new session with no controlling terminal."""
    try:
        os.setsid()
    except OSError as exc:
        raise errors.DaemonProcessDetachError(
            exc.errno, f"cannot start a new session (setsid): {exc.strerror}"
        ) from exc


def flush_standard_streams() -> None:
    """Flush Python's buffers so nothing written so far is output twice (before
    a fork) or lost (before ``os._exit``)."""
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError, AttributeError):
            pass


def exit_now(status: int) -> NoReturn:
    """Leave the process at once: no atexit hooks, no ``finally`` blocks."""
    os._exit(status)


def wait_child(pid: int) -> int:
    """Reap child ``pid`` and return its wait status (0 if already reaped)."""
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:  # pragma: no cover - PEP 475 retries for us
            continue
        except ChildProcessError:
            return 0


def exits_within(pid: int, seconds: float) -> bool:
    """Wait up to ``seconds`` (on a pidfd, no polling loop) for ``pid`` to exit."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    try:
        return pidfd_exits_within(pidfd, seconds)
    finally:
        os.close(pidfd)


def pidfd_exits_within(pidfd: int, seconds: float) -> bool:
    """Wait up to ``seconds`` (any length; ``inf``: for ever) for ``pidfd``'s process to exit."""
    import select  # only where waited on: not loaded (50 kB) in every daemon

    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    deadline = time.monotonic() + seconds
    while True:
        if poller.poll(wait_ms(deadline - time.monotonic())):
            return True
        if time.monotonic() >= deadline:
            return False


def drain(fd: int) -> None:
    """Read a non-blocking pipe until it is empty (a wakeup pipe's bytes)."""
    try:
        while os.read(fd, 512):
            pass
    except OSError:  # BlockingIOError: empty now
        pass


def describe_wait_status(status: int) -> str:
    """``"exited with status N"`` or ``"was killed by signal SIGX"``."""
    if os.WIFSIGNALED(status):
        return f"was killed by signal {signal_name(os.WTERMSIG(status))}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


# The C signal module: signal.py's wrappers turn every number into an enum
# and back (in a freshly forked daemon, dozens of calls, each touching memory:
# copy-on-write faults), and importing signal.py builds those enums (40 kB in
# every daemon). The C functions take and give plain ints.
_raw_signal: Any = sys.modules.get("_signal") or __import__("_signal")  # always loaded
SIG_DFL: int = _raw_signal.SIG_DFL
SIG_IGN: int = _raw_signal.SIG_IGN

# Signal names and numbers, as signal.Signals has them (of several names for
# a number, the alphabetically first: SIGABRT, not SIGIOT; SIGCHLD, not SIGCLD).
SIGNAL_NUMBERS: dict[str, int] = {
    name: value
    for name, value in vars(_raw_signal).items()
    if name.startswith("SIG") and not name.startswith("SIG_") and isinstance(value, int)
}
SIGNAL_NAMES: dict[int, str] = {}
for _name, _number in sorted(SIGNAL_NUMBERS.items()):
    SIGNAL_NAMES.setdefault(_number, _name)


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15, or the number if the platform has no name."""
    return SIGNAL_NAMES.get(signum, str(signum))


def raise_signal(signum: int) -> None:
    """Send ``signum`` to this very thread."""
    _raw_signal.raise_signal(signum)


def ignore_signals(signals: Iterable[int]) -> None:
    """Set ``signals`` to SIG_IGN (for the whole process, every thread)."""
    for signum in signals:
        try:
            _raw_signal.signal(signum, _raw_signal.SIG_IGN)
        except (OSError, ValueError):
            pass


def set_wakeup_fd(fd: int) -> int:
    """Python's signal wakeup descriptor (-1: none); returns the previous one."""
    return int(_raw_signal.set_wakeup_fd(fd, warn_on_full_buffer=False))


def block_signals(signals: Iterable[int]) -> set[int]:
    """Hold back ``signals`` in this thread; returns the previous mask.

    A blocked signal is not lost: it stays pending and is delivered as soon
    as :func:`set_signal_mask` restores the mask, to whatever handler is
    installed by then. The mask survives ``fork`` (and ``exec``).
    """
    return set(_raw_signal.pthread_sigmask(_raw_signal.SIG_BLOCK, signals))


def set_signal_mask(mask: Iterable[int]) -> None:
    """Make ``mask`` this thread's set of blocked signals."""
    _raw_signal.pthread_sigmask(_raw_signal.SIG_SETMASK, mask)


# -- descriptors ------------------------------------------------------------


def highest_open_fd() -> int:
    """The highest descriptor open in this process (the soft limit's last if unknown)."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        return max((int(name) for name in names if name.isdigit()), default=2)
    return max_open_files() - 1


# Descriptors another thread might open between highest_open_fd() in the
# launcher and the fork are caught by closing this much further.
_SLACK = 64


def close_ranges(keep: Iterable[int], top: int, low: int = 3) -> list[tuple[int, int]]:
    """The ``closerange`` calls that close ``low``..``top`` except ``keep``.

    Worked out in the launcher, so that the daemon only makes the calls.
    """
    ranges = []
    start = low
    for fd in sorted({fd for fd in keep if fd >= low}):
        if fd > start:
            ranges.append((start, fd))
        start = fd + 1
    end = top + _SLACK + 1
    if start < end:
        ranges.append((start, end))
    return ranges


def settle(closing: list[tuple[int, int]], prevent_core: bool, umask: int, directory: str) -> None:
    """In the new daemon: close inherited descriptors, no core, umask, chdir.

    One function with the work precomputed, because in a freshly forked
    process every further Python function and object touched costs
    copy-on-write page faults, which dominate the detach time.
    """
    for low, high in closing:
        os.closerange(low, high)
    if prevent_core:
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        except (OSError, ValueError) as exc:
            raise errors.DaemonOSEnvironmentError(
                errno.EPERM, f"cannot disable core dumps (RLIMIT_CORE): {exc}"
            ) from exc
    os.umask(umask)
    try:
        os.chdir(directory)
    except OSError as exc:
        raise errors.DaemonOSEnvironmentError(
            exc.errno, f"cannot change working directory to {directory!r}: {exc.strerror}"
        ) from exc


def install_handlers(handlers: list[tuple[int, object]]) -> None:
    """``signal.signal`` for each pair, without the enum conversions."""
    for signum, handler in handlers:
        _raw_signal.signal(signum, handler)


def redirect(sources: tuple[int, ...], closing: tuple[int, ...]) -> None:
    """Make fds 0-2 refer to ``sources``, then close ``closing``."""
    for target, source in enumerate(sources):
        if source != target:
            os.dup2(source, target, inheritable=True)
        else:
            os.set_inheritable(target, True)
    for fd in closing:
        try:
            os.close(fd)
        except OSError:
            pass


def max_open_files() -> int:
    """The soft ``RLIMIT_NOFILE``, or 1024 when it is unlimited."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1024
    return int(soft)


def above_stdio(fd: int) -> int:
    """``fd`` itself if it is above 2, else a close-on-exec duplicate that is."""
    if fd > 2:
        return fd
    import fcntl  # rarely needed: not loaded (50 kB) in every daemon

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)


# The longest single poll()/select() (poll takes an int of milliseconds):
# longer waits, up to an infinite one, loop until their deadline.
MAX_WAIT = 1_000_000.0  # seconds


def wait_ms(seconds: float) -> int:
    """``seconds`` (clamped to 0..MAX_WAIT) in milliseconds, for ``poll()``."""
    return int(min(max(seconds, 0.0), MAX_WAIT) * 1000)


def out_of_descriptors(exc: BaseException) -> BaseException | None:
    """A clear error for an ``EMFILE``/``ENFILE`` met while preparing; None otherwise."""
    if not isinstance(exc, OSError) or isinstance(exc, errors.DaemonError):
        return None
    if exc.errno == errno.EMFILE:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        return errors.DaemonOSEnvironmentError(
            exc.errno,
            f"out of file descriptors while preparing to detach ({exc.strerror}; "
            f"the limit is {soft}): raise it (ulimit -n) or keep fewer files open",
        )
    if exc.errno == errno.ENFILE:
        return errors.DaemonOSEnvironmentError(
            exc.errno,
            f"the system is out of file descriptors ({exc.strerror}); "
            "raise fs.file-max or close files, then try again",
        )
    return None


# -- process environment ------------------------------------------------------


def change_root(directory: str) -> None:
    """chdir into ``directory`` and make it the root directory."""
    try:
        os.chdir(directory)
        os.chroot(directory)
    except OSError as exc:
        raise errors.DaemonOSEnvironmentError(
            exc.errno, f"cannot chroot to {directory!r}: {exc.strerror}"
        ) from exc


def has_capability(cap: int) -> bool:
    """True if the effective capability set holds capability number ``cap``.

    Root without a capability bounding set (the common case) has them all;
    reading ``/proc/self/status`` lets an unprivileged process that was given
    one capability (e.g. CAP_SYS_CHROOT by a container) be judged right.
    """
    try:
        with open("/proc/self/status", "rb") as status:
            for line in status:
                if line.startswith(b"CapEff:"):
                    return bool(int(line.split()[1], 16) >> cap & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def drop_privileges(uid: int, gid: int, groups: list[int] | None) -> None:
    """Switch real, effective and saved ids to ``uid``/``gid`` for good.

    Order matters: supplementary groups and the group are changed while we
    still have the right to, the user last. ``groups`` None leaves the
    supplementary groups alone. Afterwards the change is verified, including
    that root cannot be regained.
    """
    was_root = os.geteuid() == 0
    try:
        if groups is not None:
            os.setgroups(groups)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise errors.PrivilegeError(
            exc.errno, f"cannot change process owner to uid {uid}, gid {gid}: {exc.strerror}"
        ) from exc
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise errors.PrivilegeError(
            errno.EPERM,
            f"privilege change to uid {uid}, gid {gid} did not take effect "
            f"(uids {os.getresuid()}, gids {os.getresgid()})",
        )
    if was_root and uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise errors.PrivilegeError(
            errno.EPERM, f"root privileges could be regained after switching to uid {uid}"
        )


# -- what started us ----------------------------------------------------------


def _parent_command(ppid: int) -> str:
    try:
        with open(f"/proc/{ppid}/comm", "rb") as comm:
            return comm.read().decode(errors="replace").strip()
    except OSError:
        return ""


def _fd_is_socket(fd: int) -> bool:
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False


def detach_decision() -> tuple[bool, str]:
    """Whether a daemon should detach, and why, judged from the parent.

    No detaching when a supervisor already made us a daemon: we are PID 1 of
    a container, our parent is init or a systemd manager (system or user
    instance), or stdin is a socket (inetd-style super-server). Inherited
    environment variables are not trusted: a shell inside a service carries
    ``INVOCATION_ID`` and still needs to detach.
    """
    if os.getpid() == 1:
        return False, "process is PID 1 (container init)"
    from ._activation import made_by_daemonkit

    if made_by_daemonkit():
        return False, "already a daemon, made by the daemonkit command"
    ppid = os.getppid()
    if ppid == 1:
        return False, "parent is init (PID 1)"
    if _parent_command(ppid) == "systemd":
        return False, f"parent (PID {ppid}) is a systemd service manager"
    if _fd_is_socket(0):
        return False, "stdin is a socket (started by a super-server)"
    return True, f"parent (PID {ppid}) is an ordinary process"


def platform_supported() -> bool:
    """daemonkit needs fork and setsid: any POSIX system."""
    return sys.platform != "win32" and hasattr(os, "fork")


# -- supervision --------------------------------------------------------------------

SUPERVISOR_NAME = "dk-supervise"  # a supervisor's /proc/PID/comm: how ``status`` knows one
PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


_LIBC: list[Any] = []


def load_libc() -> None:
    """Load what ``prctl`` needs now (before a chroot hides the modules)."""
    if not _LIBC and sys.platform.startswith("linux"):
        import ctypes

        _LIBC.append(ctypes.CDLL(None, use_errno=True))


def _prctl(option: int, value: int | bytes) -> bool:
    """Linux ``prctl(option, value)``; False where it is not available."""
    load_libc()
    return bool(_LIBC) and int(_LIBC[0].prctl(option, value, 0, 0, 0)) == 0


def set_subreaper(on: bool) -> bool:
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER), so they can be reaped;
    ``on=False`` gives the duty back. PID 1 adopts them anyway. True if it worked.
    """
    if os.getpid() == 1:
        return on
    return _prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def is_subreaper() -> bool:
    """True if this process adopts orphans (PID 1, or PR_GET_CHILD_SUBREAPER)."""
    if os.getpid() == 1:
        return True
    load_libc()
    if not _LIBC:
        return False
    import ctypes

    flag = ctypes.c_int(0)
    if int(_LIBC[0].prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)) != 0:
        return False
    return flag.value != 0


def kill_and_reap(pid: int) -> None:
    """SIGKILL child ``pid`` and collect it (nothing of it may stay behind)."""
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
    wait_child(pid)


def set_process_name(name: str) -> None:
    """Name this process in ``/proc/PID/comm`` (what ``ps`` and ``top`` show)."""
    _prctl(PR_SET_NAME, name.encode()[:15])


def process_name(pid: int) -> str | None:
    """The name in ``/proc/PID/comm``, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as comm:
            return comm.read().decode(errors="replace").rstrip("\n")
    except OSError:
        return None


def children_of(pid: int) -> list[int]:
    """The live children of ``pid`` (``/proc/PID/task/*/children``)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as listing:
                found.extend(int(word) for word in listing.read().split())
        except (OSError, ValueError):
            continue
    return sorted(set(found))


def supervised_programs(supervisor: int) -> list[int]:
    """The programs a supervisor runs, told from the orphans it adopted: each
    was given ``DAEMONKIT_DAEMON_PID`` naming itself (its descendants inherit
    the variable, naming their ancestor). All children where environments
    cannot be read (another user's processes)."""
    children = children_of(supervisor)
    programs = []
    for child in children:
        try:
            with open(f"/proc/{child}/environ", "rb") as environ:
                variables = environ.read().split(b"\0")
        except OSError:
            return children
        if f"DAEMONKIT_DAEMON_PID={child}".encode() in variables:
            programs.append(child)
    return programs or children


def parent_of(pid: int) -> int | None:
    """The parent pid of ``pid`` (``/proc/PID/stat``), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            text = stat_file.read()
    except OSError:
        return None
    fields = text[text.rfind(b")") + 2 :].split()
    return int(fields[1]) if len(fields) > 1 else None


def descends_from(pid: int, ancestor: int) -> bool:
    """True if ``pid`` is ``ancestor`` or one of its descendants (now)."""
    for _ in range(64):
        if pid == ancestor:
            return True
        parent = parent_of(pid)
        if parent is None or parent <= 1:
            return False
        pid = parent
    return False


def spawn(in_child: Any, *, new_group: bool, execs: bool) -> int:
    """Fork a child that runs ``in_child()``: it execs (``execs``), or returns an exit status.

    The child starts with every signal blocked (no handler of ours runs in
    it; ``in_child`` sets its own mask), with ``SIGKILL`` due if this
    process dies (PR_SET_PDEATHSIG: a supervisor killed by ``kill -9``
    leaves nothing running), and with ``new_group`` in its own process
    group, made the terminal's foreground group if ours was. An OSError in
    ``in_child`` (a failed exec) is raised here, with the child reaped.
    """
    import signal

    flush_standard_streams()  # or the child writes them again
    previous = block_signals(signal.valid_signals())
    errors_r, errors_w = os.pipe2(os.O_CLOEXEC)
    parent = os.getpid()
    try:
        pid = os.fork()
    except OSError:
        os.close(errors_r)
        os.close(errors_w)
        set_signal_mask(previous)
        raise
    if pid == 0:  # the child: from here on, leave only by exec or _exit
        code = 127
        try:
            os.close(errors_r)
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != parent:
                os._exit(code)  # the supervisor died before the line above
            if new_group:
                os.setpgid(0, 0)
                _take_terminal(os.getpid())
            if not execs:  # the pipe closes at exec; a function has no exec to wait for
                os.close(errors_w)
            code = int(in_child())
        except OSError as exc:
            code = 127 if execs else 1
            try:
                os.write(errors_w, str(exc.errno or errno.EIO).encode())
            except OSError:
                pass  # closed already (a function's own error): just the status
        except BaseException:
            code = 1
        os._exit(code)
    os.close(errors_w)
    if new_group:
        try:
            os.setpgid(pid, pid)  # also here, so a signal sent at once finds the group
        except OSError:
            pass  # it did so itself, and has exec'd
    set_signal_mask(previous)
    try:
        report = b""
        while chunk := os.read(errors_r, 64):
            report += chunk
    finally:
        os.close(errors_r)
    if report:
        wait_child(pid)
        number = int(report)
        raise OSError(number, os.strerror(number))
    return pid


def _take_terminal(group: int) -> None:
    """Make ``group`` the foreground group of our terminal, if we had it (SIGTTOU is blocked)."""
    try:
        if os.isatty(0) and os.tcgetpgrp(0) == os.getpgid(os.getppid()):
            os.tcsetpgrp(0, group)
    except OSError:
        pass


def restore_terminal() -> None:
    """Take the terminal's foreground back after a child that had it exited."""
    import signal

    try:
        if not os.isatty(0):
            return
    except OSError:
        return
    previous = block_signals({signal.SIGTTOU})
    try:
        os.tcsetpgrp(0, os.getpgrp())
    except OSError:
        pass
    finally:
        set_signal_mask(previous)
