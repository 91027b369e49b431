"""Standard stream targets: resolve them in the launcher, redirect in the daemon.

PEP 3143 gives ``stdin``/``stdout``/``stderr`` as file objects (or None for
``/dev/null``); daemonkit also takes paths, opened for append (stdin: for
reading). Paths are opened in the launching process, before any fork, so that
a missing directory, a permission problem or a read-only filesystem is
reported where the user can see it, naming the file.

Under systemd, a ``stdout``/``stderr`` left at ``None`` that is connected to
the journal (``$JOURNAL_STREAM`` names its device and inode) stays connected
to it instead of going to ``/dev/null``, so the daemon's tracebacks and
prints reach ``journalctl``.
"""

from __future__ import annotations

import os

from . import _posix
from ._lazy import errors

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from typing import Any


STREAM_NAMES = ("stdin", "stdout", "stderr")


class StreamTargets:
    """Descriptors that will become fds 0, 1 and 2 in the daemon.

    ``None`` means ``/dev/null``. ``owned`` lists descriptors daemonkit opened
    itself (and may close); ``created`` lists files it created, so that a
    start that fails before the fork leaves nothing behind.
    """

    def __init__(self) -> None:
        self.fds: list[int | None] = [None, None, None]
        self.owned: list[int] = []
        self.created: list[str] = []
        self.null: int | None = None

    def open_null(self) -> None:
        """Open ``/dev/null`` now if a stream needs it (before any chroot)."""
        if self.null is None and None in self.fds:
            self.null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
            self.owned.append(self.null)

    def keep(self) -> list[int]:
        """Descriptors that must survive the closing of inherited ones."""
        return [fd for fd in [*self.fds, self.null] if fd is not None]

    def forget(self) -> None:
        """Redirecting is done: nothing here is ours to close or remove any more."""
        self.owned.clear()
        self.created.clear()
        self.null = None

    def discard(self) -> None:
        """Undo :func:`resolve_streams`: close what it opened, unlink what it made."""
        for fd in self.owned:
            try:
                os.close(fd)
            except OSError:
                pass
        for path in self.created:
            try:
                os.unlink(path)
            except OSError:
                pass
        self.owned.clear()
        self.created.clear()


def file_descriptor(obj: object) -> int | None:
    """The descriptor behind ``obj`` (int, file-like, socket), None if it has none."""
    if isinstance(obj, bool):
        return None
    if isinstance(obj, int):
        return obj
    fileno = getattr(obj, "fileno", None)
    if fileno is None:
        return None
    try:
        fd = fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    return fd if isinstance(fd, int) and fd >= 0 else None


def connected_to_journal(fd: int) -> bool:
    """True if ``fd`` is the journal stream systemd gave this service."""
    value = os.environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        status = os.fstat(fd)
    except OSError:
        return False
    return (status.st_dev, status.st_ino) == (int(device), int(inode))


def _open_path(name: str, path: str, umask: int, targets: StreamTargets) -> int:
    if name == "stdin":
        flags, mode = os.O_RDONLY, 0
    else:
        # Never writable by everyone, even at umask 0: anyone could forge lines.
        flags, mode = os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o664 & ~umask
    flags |= os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0)
    from ._logopen import UnsafePath, open_log

    try:
        fd, created, warning = open_log(path, flags, mode)
        if created:
            os.fchmod(fd, mode)  # the launcher's own umask must not narrow it
    except UnsafePath as exc:
        raise errors.StreamError(f"{name}: refusing {path!r}: {exc}") from exc
    except ValueError as exc:  # a NUL in the path
        raise errors.StreamError(f"{name}: {path!r} is not a usable path: {exc}") from exc
    except OSError as exc:
        hint = {
            "ENOENT": "create the directory first",
            "EACCES": "check the permissions of the file and its directory",
            "EROFS": "the filesystem is read-only; choose another path",
            "EISDIR": "give a file, not a directory",
            "ENOSPC": "the filesystem is full; free some space",
            "ENXIO": "nothing is behind it: a fifo nobody reads, or a terminal that is gone",
            "ELOOP": "a symbolic link appeared as it was opened; check the directory",
        }
        from errno import errorcode

        code = errorcode.get(exc.errno or 0, "")
        advice = hint.get(code, "choose a path the launching process can open")
        raise errors.StreamError(
            f"{name}: cannot open {path!r}: {exc.strerror} ({advice})"
        ) from exc
    if warning:
        from ._launcher import say

        say(f"daemonkit: warning: {name}: {path!r}: {warning}")
    if created:
        targets.created.append(path)
    targets.owned.append(fd)
    if fd <= 2:  # the launcher had closed a standard stream; keep ours clear of 0-2
        raised = _posix.above_stdio(fd)
        os.close(fd)
        targets.owned[-1] = fd = raised
    return fd


def resolve_streams(policies: dict[str, Any], umask: int) -> StreamTargets:
    """Turn the three stream policies into descriptors, validating each."""
    targets = StreamTargets()
    try:
        for index, name in enumerate(STREAM_NAMES):
            value = policies[name]
            if value is None:
                if index > 0 and connected_to_journal(index):
                    targets.fds[index] = index  # stays with the journal
                continue
            if isinstance(value, (str, os.PathLike)):
                path = os.fsdecode(os.fspath(value))
                targets.fds[index] = _open_path(name, path, umask, targets)
                continue
            fd = file_descriptor(value)
            if fd is None:
                raise errors.StreamError(
                    f"{name}: {value!r} has no usable fileno(); give a real file "
                    "object, a path, or None for /dev/null"
                )
            try:
                os.fstat(fd)
            except (OSError, OverflowError) as exc:
                raise errors.StreamError(
                    f"{name}: descriptor {fd} of {value!r} is not open"
                ) from exc
            targets.fds[index] = fd
    except BaseException:
        targets.discard()
        raise
    return targets


def redirect_plan(targets: StreamTargets) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """What will become fds 0, 1 and 2, and what to close after: worked out pre-fork.

    ``/dev/null`` is opened here where a stream needs it (before any
    chroot). A source that is itself one of fds 0-2 (``stderr=sys.stdout``)
    is first copied above 2, so redirecting one stream never clobbers
    another's source. Every descriptor made here is in ``targets.owned``
    (closed again by :meth:`StreamTargets.discard` if the start fails).
    """
    targets.open_null()
    sources: list[int] = []
    for target_fd, source in enumerate(targets.fds):
        fd = targets.null if source is None else source
        assert fd is not None
        if fd != target_fd and fd <= 2:
            fd = _posix.above_stdio(fd)
            targets.owned.append(fd)
        sources.append(fd)
    return tuple(sources), tuple(fd for fd in targets.owned if fd > 2)
