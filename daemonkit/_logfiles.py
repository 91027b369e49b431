"""Log files that survive the detach and follow log rotation.

Two kinds of log file are looked after:

- ``stdout``/``stderr`` given as paths (or as file objects opened for
  append), which become the daemon's fds 1 and 2;
- the files of ``logging`` handlers configured before the context is
  entered: their descriptors are kept open across the detach without being
  listed in ``files_preserve``.

Reopening (on SIGHUP, after ``logrotate`` renamed the file) opens the path
afresh and ``dup2``\\ s the new file over the descriptor already in use. The
Python objects writing to it (``sys.stdout``, a handler's stream) are not
touched, so nothing they buffer is lost, no lock is taken inside a signal
handler, and a write in progress goes wholly to the old file or to the new.
"""

from __future__ import annotations

import os
import sys

from ._logopen import UnsafePath, open_log
from .streams import file_descriptor

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS
if TYPE_CHECKING:
    from typing import Any

REOPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOCTTY


def logging_handlers() -> list[Any]:
    """Every handler attached to a logger, if the program configured logging."""
    logging = sys.modules.get("logging")
    if logging is None:  # never imported: nothing can be configured
        return []
    loggers = [logging.getLogger()]
    loggers += [
        logger
        for logger in list(logging.Logger.manager.loggerDict.values())
        if isinstance(logger, logging.Logger)
    ]
    handlers: dict[int, Any] = {}
    for logger in loggers:
        for handler in list(logger.handlers):
            handlers.setdefault(id(handler), handler)
    return list(handlers.values())


def handler_descriptor(handler: object) -> int | None:
    """The descriptor of a logging handler's stream or socket, if it has one."""
    for attribute in ("stream", "sock", "socket"):
        inner = getattr(handler, attribute, None)
        if inner is not None:
            return file_descriptor(inner)
    return None


def _reopens_itself(handler: object) -> bool:
    """True for ``WatchedFileHandler``, which notices rotation on its own."""
    module = sys.modules.get("logging.handlers")
    return module is not None and isinstance(handler, module.WatchedFileHandler)


def file_handlers(handlers: list[Any]) -> list[Any]:
    """The ``logging.FileHandler``\\ s among ``handlers`` that daemonkit reopens.

    Open or not yet (``delay=True``): the stream is looked up at each
    reopening. ``WatchedFileHandler`` is left out: it notices rotation itself.
    """
    logging = sys.modules.get("logging")
    if logging is None:
        return []
    return [
        handler
        for handler in handlers
        if isinstance(handler, logging.FileHandler) and not _reopens_itself(handler)
    ]


def stream_log_path(value: object) -> str | None:
    """The path to reopen for a ``stdout``/``stderr`` policy, if there is one.

    Paths are, and so are file objects opened for append on a named file
    (``open(path, "a")``, python-daemon's idiom); a relative name is taken
    from the current directory, if the file there is the one open.
    """
    if isinstance(value, (str, os.PathLike)):
        return os.path.abspath(os.fsdecode(os.fspath(value)))
    name, mode = getattr(value, "name", None), getattr(value, "mode", "")
    if not (isinstance(name, str) and isinstance(mode, str) and "a" in mode):
        return None
    path = os.path.abspath(name)
    fd = file_descriptor(value)
    try:
        same = fd is not None and _identity(os.fstat(fd)) == _identity(os.stat(path))
    except OSError:
        same = False
    return path if same else None


def _identity(status: os.stat_result) -> tuple[int, int]:
    return (status.st_dev, status.st_ino)


def inside_root(path: str, root: str | None) -> str | None:
    """``path`` as seen from inside the chroot ``root``; None if outside it."""
    if root is None:
        return path
    root = root.rstrip("/") or "/"
    if root == "/":
        return path
    if path == root or not path.startswith(root + "/"):
        return None
    return path[len(root) :]


class LogFiles:
    """Descriptors to point at fresh files, by path, when logs are rotated."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root  # the chroot: paths are reopened as seen from inside it
        self.streams: list[tuple[str, int, tuple[int, int]]] = []  # path, fd, file
        self.handlers: list[Any] = []
        self.skipped: list[str] = []  # outside the chroot: cannot be reopened

    def add_stream(self, path: str, fd: int, source: int) -> None:
        """Reopen ``path`` onto ``fd`` at each rotation; ``source`` is open on it now."""
        if inside_root(path, self.root) is None:
            self.skipped.append(path)
            return
        self.streams.append((path, fd, _identity(os.fstat(source))))

    def add_handler(self, handler: Any) -> None:
        """Reopen a ``logging.FileHandler``'s file (whatever its stream is then)."""
        self.handlers.append(handler)

    def __bool__(self) -> bool:
        return bool(self.streams or self.handlers)

    def _targets(self) -> dict[str, list[int]]:
        """Descriptors to reopen, by path, as they are now.

        A stream descriptor that no longer holds the file it held (the
        program reused the number) and a handler that was closed are left
        alone, so that reopening never clobbers someone else's descriptor.
        """
        targets: dict[str, list[int]] = {}
        for path, fd, identity in self.streams:
            try:
                if _identity(os.fstat(fd)) != identity:
                    continue
            except OSError:
                continue
            targets.setdefault(path, []).append(fd)
        for handler in self.handlers:
            stream = getattr(handler, "stream", None)  # no lock: we may be in a handler
            handler_fd = file_descriptor(stream) if stream is not None else None
            path = getattr(handler, "baseFilename", "")
            if handler_fd is not None and path and inside_root(path, self.root) is not None:
                targets.setdefault(path, []).append(handler_fd)
        return targets

    def reopen(self) -> list[str]:
        """Open each path afresh over its descriptors; returns what failed.

        Safe in a signal handler: only ``open``, ``fstat``, ``dup2`` and
        ``close``. A file that cannot be opened (say, its directory is not
        writable by the daemon's user and logrotate did not ``create`` it)
        keeps receiving output at the old file, and a line saying so goes to
        stderr.
        """
        problems = []
        for path, fds in self._targets().items():
            seen = inside_root(path, self.root) or path
            try:
                fresh = open_log(seen, REOPEN_FLAGS)[0]  # the daemon's umask applies
            except (OSError, UnsafePath) as exc:
                why = exc.strerror if isinstance(exc, OSError) else f"refused: {exc}"
                problem = f"daemonkit: cannot reopen log file {path!r}: {why}"
                problems.append(problem)
                try:
                    os.write(2, f"{problem}; still writing to the old file\n".encode())
                except OSError:
                    pass
                continue
            try:
                identity = _identity(os.fstat(fresh))
                for fd in fds:
                    os.dup2(fresh, fd, inheritable=fd <= 2)
            finally:
                os.close(fresh)
            self.streams = [
                (where, fd, identity if where == path else known)
                for where, fd, known in self.streams
            ]
        return problems
