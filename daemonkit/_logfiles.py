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
from typing import Any

from .streams import file_descriptor

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


def handler_log_file(handler: object) -> tuple[str, int] | None:
    """``(path, fd)`` of a ``logging.FileHandler`` whose file is open, else None."""
    logging = sys.modules.get("logging")
    if logging is None or not isinstance(handler, logging.FileHandler):
        return None
    if handler.stream is None or _reopens_itself(handler):  # delay=True: opens later
        return None
    fd = file_descriptor(handler.stream)
    return None if fd is None else (handler.baseFilename, fd)


def stream_log_path(value: object) -> str | None:
    """The path to reopen for a ``stdout``/``stderr`` policy, if there is one.

    Paths are, and so are file objects opened for append on a named file
    (``open(path, "a")``, python-daemon's idiom).
    """
    if isinstance(value, (str, os.PathLike)):
        return os.path.abspath(os.fsdecode(os.fspath(value)))
    name, mode = getattr(value, "name", None), getattr(value, "mode", "")
    if isinstance(name, str) and isinstance(mode, str) and "a" in mode and os.path.isabs(name):
        return name
    return None


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

    def __init__(self) -> None:
        self.paths: dict[str, list[int]] = {}
        self.skipped: list[str] = []  # outside the chroot: cannot be reopened

    def add(self, path: str, fd: int, root: str | None = None) -> None:
        """Reopen ``path`` (seen from ``root``) onto ``fd`` at each rotation."""
        seen = inside_root(path, root)
        if seen is None:
            self.skipped.append(path)
            return
        fds = self.paths.setdefault(seen, [])
        if fd not in fds:
            fds.append(fd)

    def __bool__(self) -> bool:
        return bool(self.paths)

    def reopen(self) -> list[str]:
        """Open each path afresh over its descriptors; returns what failed.

        Safe in a signal handler: only ``open``, ``dup2`` and ``close``.
        A file that cannot be opened (say, its directory is not writable
        by the daemon's user and logrotate did not ``create`` it) keeps
        receiving output at the old file, and a line saying so goes to
        stderr.
        """
        problems = []
        for path, fds in self.paths.items():
            try:
                fresh = os.open(path, REOPEN_FLAGS, 0o666)  # the daemon's umask applies
            except OSError as exc:
                problem = f"daemonkit: cannot reopen log file {path!r}: {exc.strerror}"
                problems.append(problem)
                try:
                    os.write(2, f"{problem}; still writing to the old file\n".encode())
                except OSError:
                    pass
                continue
            try:
                for fd in fds:
                    os.dup2(fresh, fd, inheritable=fd <= 2)
            except OSError as exc:  # pragma: no cover - the descriptor was closed
                problems.append(f"daemonkit: cannot reopen log file {path!r}: {exc.strerror}")
            finally:
                os.close(fresh)
        return problems
