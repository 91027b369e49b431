"""Signal maps: resolve them where errors can be seen, install them in the daemon.

A ``signal_map`` (PEP 3143) maps signals to handlers. Keys may be
``signal.Signals``, ints or names (``"SIGHUP"``, ``"HUP"``, any case); values
may be callables, ``None`` (ignore), ``signal.SIG_DFL``/``signal.SIG_IGN`` or
the name of a method of the context (``"terminate"``). Resolution happens in
the launching process so a typo fails before the fork, not silently in the
daemon.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any, TypeAlias

from .errors import SignalMapError

Handler: TypeAlias = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
ResolvedMap = dict[signal.Signals, Handler]

UNCATCHABLE = frozenset({signal.SIGKILL, signal.SIGSTOP})


def default_signal_map() -> dict[Any, Any]:
    """PEP 3143's default: ignore terminal job control, SIGTERM terminates."""
    mapping: dict[Any, Any] = {
        sig: None for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
    }
    mapping[signal.SIGTERM] = "terminate"
    return mapping


def resolve_signal(key: object, label: str = "signal_map") -> signal.Signals:
    """``signal.Signals`` for a Signals, an int or a name such as ``"hup"``.

    ``label`` names the setting in error messages.
    """
    if isinstance(key, signal.Signals):
        sig = key
    elif isinstance(key, int) and not isinstance(key, bool):
        try:
            sig = signal.Signals(key)
        except ValueError:
            raise SignalMapError(f"{label}: {key} is not a signal number") from None
    elif isinstance(key, str):
        name = key.strip().upper()
        if not name.startswith("SIG"):
            name = "SIG" + name
        try:
            sig = signal.Signals[name]
        except KeyError:
            raise SignalMapError(
                f"{label}: unknown signal name {key!r} (use names like 'SIGHUP' or 'HUP')"
            ) from None
    else:
        raise SignalMapError(
            f"{label}: key {key!r} is not a signal (give a signal.Signals, an int or a name)"
        )
    return sig


def resolve_signal_map(signal_map: Mapping[Any, Any] | None, context: object) -> ResolvedMap:
    """Validate ``signal_map`` and turn every entry into an installable handler."""
    resolved: ResolvedMap = {}
    if signal_map is None:
        return resolved
    if not isinstance(signal_map, Mapping):
        raise SignalMapError(f"signal_map must be a mapping, not {type(signal_map).__name__}")
    for key, value in signal_map.items():
        sig = resolve_signal(key)
        if sig in UNCATCHABLE:
            raise SignalMapError(f"signal_map: {sig.name} cannot be caught or ignored")
        resolved[sig] = _resolve_handler(sig, value, context)
    return resolved


def _resolve_handler(sig: signal.Signals, value: object, context: object) -> Handler:
    if value is None:
        return signal.SIG_IGN
    if isinstance(value, signal.Handlers):
        return value
    if isinstance(value, str):
        method: Handler = getattr(context, value, None)
        if not callable(method):
            raise SignalMapError(
                f"signal_map[{sig.name}]: {value!r} is not a method of {type(context).__name__}"
            )
        return method
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return signal.Handlers(value)
        except ValueError:
            raise SignalMapError(
                f"signal_map[{sig.name}]: {value} is neither SIG_DFL nor SIG_IGN"
            ) from None
    if callable(value):
        return value
    raise SignalMapError(
        f"signal_map[{sig.name}]: {value!r} is not a handler "
        "(give a callable, None, signal.SIG_IGN, signal.SIG_DFL or a method name)"
    )


def install_signal_map(resolved: ResolvedMap) -> None:
    """Install every handler of an already resolved map."""
    for sig, handler in resolved.items():
        signal.signal(sig, handler)
