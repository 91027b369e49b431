"""daemonkit: turn a program into a well-behaved Unix daemon, and keep it so.

``with daemonkit.DaemonContext(...):`` is a drop-in for python-daemon's
``daemon.DaemonContext`` (PEP 3143) whose launcher waits until the daemon is
ready and reports its errors. Public names are imported lazily, so that
``import daemonkit`` stays cheap.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing costs milliseconds to import; mypy knows this name

__version__ = "0.1.0"

_EXPORTS = {
    "DaemonContext": "context",
    "Daemon": "app",
    "ready": "readiness",
    "notify": "notify",
    "DaemonError": "errors",
    "ConfigurationError": "errors",
    "DirectoryError": "errors",
    "PIDFileError": "errors",
    "PIDFileTimeoutError": "errors",
    "PIDFile": "pidfile",
    "UnknownUserError": "errors",
    "UnknownGroupError": "errors",
    "StreamError": "errors",
    "SignalMapError": "errors",
    "ThreadsRunningError": "errors",
    "StopRequest": "_stop",
    "run_async": "_async",
    "DaemonOSEnvironmentError": "errors",
    "PrivilegeError": "errors",
    "DaemonProcessDetachError": "errors",
    "StartupError": "errors",
    "AlreadyRunningError": "errors",
    "Supervisor": "supervise",
}

__all__ = [
    "AlreadyRunningError",
    "ConfigurationError",
    "Daemon",
    "DaemonContext",
    "DaemonError",
    "DaemonOSEnvironmentError",
    "DaemonProcessDetachError",
    "DirectoryError",
    "PIDFile",
    "PIDFileError",
    "PIDFileTimeoutError",
    "PrivilegeError",
    "SignalMapError",
    "StartupError",
    "StopRequest",
    "StreamError",
    "Supervisor",
    "ThreadsRunningError",
    "UnknownGroupError",
    "UnknownUserError",
    "__version__",
    "notify",
    "ready",
    "run_async",
]

if TYPE_CHECKING:
    from . import notify
    from ._async import run_async
    from ._stop import StopRequest
    from .app import Daemon
    from .context import DaemonContext
    from .errors import (
        AlreadyRunningError,
        ConfigurationError,
        DaemonError,
        DaemonOSEnvironmentError,
        DaemonProcessDetachError,
        DirectoryError,
        PIDFileError,
        PIDFileTimeoutError,
        PrivilegeError,
        SignalMapError,
        StartupError,
        StreamError,
        ThreadsRunningError,
        UnknownGroupError,
        UnknownUserError,
    )
    from .pidfile import PIDFile
    from .readiness import ready
    from .supervise import Supervisor


def __getattr__(name: str) -> object:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'daemonkit' has no attribute {name!r}")
    __import__(f"daemonkit.{module_name}")
    module = sys.modules[f"daemonkit.{module_name}"]
    if name == module_name:  # a public submodule (daemonkit.notify)
        return module
    value = getattr(module, name)
    try:
        value.__module__ = "daemonkit"
    except (AttributeError, TypeError):
        pass
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
