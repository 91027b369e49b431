"""The exceptions daemonkit raises.

Every error daemonkit raises on purpose is a :class:`DaemonError`, so one
``except daemonkit.DaemonError`` catches them all, and each message names the
thing that is wrong and what to do about it::

    DaemonError
     +-- ConfigurationError (also ValueError)   a policy cannot be used as given
     |    +-- DirectoryError                    working/chroot directory unusable
     |    +-- UnknownUserError                  no such user (name or uid)
     |    +-- UnknownGroupError                 no such group (name or gid)
     |    +-- StreamError                       stdin/stdout/stderr unusable
     |    +-- SignalMapError                    a signal_map entry is invalid
     |    +-- ThreadsRunningError               other threads run at open() (see allow_threads)
     +-- DaemonOSEnvironmentError (also OSError; python-daemon's name)
     |    +-- PrivilegeError                    the change needs privileges we lack
     +-- DaemonProcessDetachError (also OSError; python-daemon's name)
     +-- StartupError                           the daemon failed before it was ready
     +-- AlreadyRunningError (also lockfile.AlreadyLocked)   the pidfile is locked
     |    +-- PIDFileTimeoutError (also lockfile.LockTimeout) ... still, after a wait
     +-- PIDFileError (also lockfile.LockFailed)  the pidfile cannot be used safely

Configuration errors are raised in the launching process, before any fork,
so nothing has happened yet when they reach the caller.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing is not imported at run time: it costs ms and RSS


__all__ = [
    "AlreadyRunningError",
    "ConfigurationError",
    "DaemonError",
    "DaemonOSEnvironmentError",
    "DaemonProcessDetachError",
    "DirectoryError",
    "PIDFileError",
    "PIDFileTimeoutError",
    "PrivilegeError",
    "SignalMapError",
    "StartupError",
    "StreamError",
    "ThreadsRunningError",
    "UnknownGroupError",
    "UnknownUserError",
]


class DaemonError(Exception):
    """Base class of every error daemonkit raises on purpose."""


class ConfigurationError(DaemonError, ValueError):
    """A :class:`~daemonkit.DaemonContext` policy cannot be used as given."""


class DirectoryError(ConfigurationError):
    """The working or chroot directory is missing or is not a directory."""


class UnknownUserError(ConfigurationError):
    """The requested user (by name or uid) does not exist."""


class UnknownGroupError(ConfigurationError):
    """The requested group (by name or gid) does not exist."""


class StreamError(ConfigurationError):
    """A standard stream target (file object or path) cannot be used."""


class SignalMapError(ConfigurationError):
    """A ``signal_map`` key or value cannot be installed."""


class ThreadsRunningError(ConfigurationError):
    """Other threads run while detaching (they would not exist in the daemon)."""


class DaemonOSEnvironmentError(DaemonError, OSError):
    """The operating system refused a change to the process environment."""


class PrivilegeError(DaemonOSEnvironmentError):
    """A requested change (user, group, chroot) needs privileges we lack."""


class DaemonProcessDetachError(DaemonError, OSError):
    """Forking or starting a new session failed while detaching."""


class StartupError(DaemonError):
    """The daemon failed, died or timed out before it was ready.

    ``details`` holds what the daemon reported (for an exception: its type,
    message and traceback, formatted in the daemon); ``pid`` is the daemon's
    process id when it was known.
    """

    def __init__(self, message: str, details: str = "", pid: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.pid = pid

    def __str__(self) -> str:
        if self.details:
            return f"{self.message}\n{self.details.rstrip()}"
        return self.message


for _cls in (
    DaemonError,
    ConfigurationError,
    DirectoryError,
    UnknownUserError,
    UnknownGroupError,
    StreamError,
    SignalMapError,
    DaemonOSEnvironmentError,
    PrivilegeError,
    DaemonProcessDetachError,
    StartupError,
):
    _cls.__module__ = "daemonkit"  # the public name; daemonkit.errors is where it lives
del _cls

if TYPE_CHECKING:
    from typing import Any

    from lockfile import AlreadyLocked, LockFailed, LockTimeout

    class AlreadyRunningError(DaemonError, AlreadyLocked):  # type: ignore[misc]
        """Another live process holds the pidfile's lock."""

    class PIDFileTimeoutError(AlreadyRunningError, LockTimeout):  # type: ignore[misc]
        """The pidfile stayed locked for the whole acquire timeout."""

    class PIDFileError(DaemonError, LockFailed):  # type: ignore[misc]
        """The pidfile cannot be opened, locked or written safely."""

else:
    _LOCKFILE_CLASSES = {
        "AlreadyRunningError": (
            ("DaemonError", "AlreadyLocked"),
            "Another live process holds the pidfile's lock.",
        ),
        "PIDFileTimeoutError": (
            ("AlreadyRunningError", "LockTimeout"),
            "The pidfile stayed locked for the whole acquire timeout.",
        ),
        "PIDFileError": (
            ("DaemonError", "LockFailed"),
            "The pidfile cannot be opened, locked or written safely.",
        ),
    }

    def __getattr__(name: str) -> Any:
        # lockfile costs milliseconds to import: build these classes on first use.
        if name in globals():
            return globals()[name]
        if name not in _LOCKFILE_CLASSES:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        import lockfile

        base_names, doc = _LOCKFILE_CLASSES[name]
        bases = tuple(
            DaemonError
            if base == "DaemonError"
            else __getattr__(base)
            if base in _LOCKFILE_CLASSES
            else getattr(lockfile, base)
            for base in base_names
        )
        cls = type(name, bases, {"__doc__": doc, "__module__": "daemonkit"})
        globals()[name] = cls
        return cls
