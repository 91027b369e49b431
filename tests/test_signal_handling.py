"""Signal handling beyond dispositions: what a daemon's handlers really do.

- ``signal_map`` and ``reopen_signal`` are checked when given, in every
  accepted spelling, and a bad entry is a ``SignalMapError`` naming it, both
  at construction and on a later assignment (in-process: nothing is forked).
- ``@context.on_signal`` adds to a copy of the map; both handler signatures
  really run in a detached daemon, and SIGTERM still terminates it.
- The dispatcher never runs a handler inside another: a signal that arrives
  while one runs is handled right after it returns.
- Signals that arrive during the daemon's setup (provoked for real with
  ``os.register_at_fork``) are held back, then handled, not lost: a SIGHUP
  reaches the daemon's handler; a SIGTERM makes the launcher fail cleanly.
- A daemon with many threads (busy and sleeping) still handles every signal
  promptly, and SIGTERM still ends it with status 0, ``finally`` run and the
  pidfile gone.
- ``stop_requested`` (a :class:`daemonkit.StopRequest`): worker threads that
  wait on it stop on SIGTERM mapped to ``"request_stop"``; waiting on it in
  the main thread lets handlers run even for a signal another thread caught.
- ``open()`` refuses to detach while other threads run, before any fork,
  unless ``allow_threads=True``.

Daemons are real processes; whose exit status matters run under the
subreaper of test_signals (``Supervised``). Every wait is bounded, and every
process is tracked and killed by PID by the ``daemons`` fixture.
"""

from __future__ import annotations

import json
import os
import select
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from conftest import Daemons, Supervised, daemon_facts, is_alive, stop, wait_gone

import daemonkit
from daemonkit import DaemonContext, SignalMapError, StopRequest

# -- helpers ------------------------------------------------------------------


def _handler(signum: int, frame: FrameType | None) -> None:
    """A valid two-argument signal handler (never called)."""


def read_lines(path: Path) -> list[str]:
    """The lines of ``path``; none if it does not exist yet."""
    return path.read_text().splitlines() if path.exists() else []


def wait_for_lines(path: Path, count: int, timeout: float = 5.0) -> list[str]:
    """Wait until ``path`` has at least ``count`` lines; return the lines last seen."""
    deadline = time.monotonic() + timeout
    lines = read_lines(path)
    while len(lines) < count and time.monotonic() < deadline:
        time.sleep(0.01)
        lines = read_lines(path)
    return lines


def track_launcher(daemons: Daemons, report: Path) -> None:
    """Track the launcher's pid, from the ``REPORT.launcher`` facts, if written."""
    launcher = Path(f"{report}.launcher")
    if launcher.exists():
        daemons.track(json.loads(launcher.read_text())["pid"])


# Daemon bodies append to REPORT + suffix with this.
RECORD = """
def record(suffix, text):
    with open(REPORT + suffix, "a") as out:
        out.write(f"{text}\\n")
"""


# -- 1. construction-time validation (in-process) -----------------------------

GOOD_KEYS = [
    pytest.param(signal.SIGHUP, id="Signals"),
    pytest.param(int(signal.SIGHUP), id="int"),
    pytest.param("SIGHUP", id="SIGHUP"),
    pytest.param("HUP", id="HUP"),
    pytest.param("hup", id="hup"),
    pytest.param("SigHup", id="mixed-case"),
    pytest.param(signal.SIGUSR1, id="SIGUSR1"),
    pytest.param(signal.SIGRTMIN, id="realtime"),
]

GOOD_VALUES = [
    pytest.param(_handler, id="function"),
    pytest.param(lambda signum, frame: None, id="lambda"),
    pytest.param(print, id="builtin"),
    pytest.param(None, id="None"),
    pytest.param(signal.SIG_DFL, id="SIG_DFL"),
    pytest.param(signal.SIG_IGN, id="SIG_IGN"),
    pytest.param("terminate", id="terminate"),
    pytest.param("request_stop", id="request_stop"),
    pytest.param("reopen_log_files", id="reopen_log_files"),
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_every_accepted_key_form_constructs(key: object) -> None:
    mapping = {key: _handler, "TERM": "terminate"}
    context = DaemonContext(signal_map=mapping)
    assert context.signal_map is mapping
    # Later assignment accepts it as well.
    other = DaemonContext()
    other.signal_map = {key: None}
    assert other.signal_map == {key: None}


@pytest.mark.parametrize("value", GOOD_VALUES)
def test_every_accepted_value_form_constructs(value: object) -> None:
    mapping = {signal.SIGUSR1: value}
    context = DaemonContext(signal_map=mapping)
    assert context.signal_map is mapping
    other = DaemonContext()
    other.signal_map = mapping
    assert other.signal_map is mapping


def test_empty_and_missing_maps() -> None:
    assert DaemonContext(signal_map={}).signal_map == {}
    default = DaemonContext().signal_map
    assert default == DaemonContext(signal_map=None).signal_map
    assert default[signal.SIGTERM] == "terminate"
    for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
        assert default[sig] is None


BAD_MAPS = [
    pytest.param({"SIGFOO": None}, "'SIGFOO'", id="unknown-name"),
    pytest.param({"FOO": _handler}, "'FOO'", id="unknown-short-name"),
    pytest.param({"": _handler}, "''", id="empty-name"),
    pytest.param({999: None}, "999", id="unknown-number"),
    pytest.param({0: None}, "0 is not a signal", id="zero"),
    pytest.param({-1: None}, "-1", id="negative"),
    pytest.param({None: _handler}, "None", id="None-key"),
    pytest.param({True: _handler}, "True", id="bool-key"),
    pytest.param({1.0: _handler}, "1.0", id="float-key"),
    pytest.param({signal.SIGKILL: None}, "SIGKILL", id="SIGKILL"),
    pytest.param({"KILL": _handler}, "SIGKILL", id="KILL-name"),
    pytest.param({int(signal.SIGKILL): "terminate"}, "SIGKILL", id="KILL-int"),
    pytest.param({signal.SIGSTOP: _handler}, "SIGSTOP", id="SIGSTOP"),
    pytest.param({"stop": None}, "SIGSTOP", id="stop-name"),
    pytest.param({"HUP": "no_such_method"}, "'no_such_method'", id="unknown-method"),
    pytest.param({"HUP": "TERMINATE"}, "'TERMINATE'", id="method-wrong-case"),
    pytest.param({"HUP": "umask"}, "'umask'", id="attribute-not-method"),
    pytest.param({"HUP": 3.5}, "3.5", id="float-value"),
    pytest.param({"HUP": [_handler]}, "is not a handler", id="list-value"),
    pytest.param({"HUP": 42}, "42", id="int-value"),
    pytest.param({"HUP": False}, "False", id="bool-value"),
    pytest.param({"HUP": b"terminate"}, "b'terminate'", id="bytes-value"),
]


def _check_bad_map(bad: Any, message: str, entry: str | None) -> None:
    with pytest.raises(SignalMapError) as raised:
        DaemonContext(signal_map=bad)
    assert message in str(raised.value)
    if entry is not None:
        assert entry in str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert isinstance(raised.value, daemonkit.ConfigurationError)

    # The same on a later assignment, which leaves the map as it was.
    context = DaemonContext(signal_map={"USR1": _handler})
    before = context.signal_map
    with pytest.raises(SignalMapError) as again:
        context.signal_map = bad
    assert message in str(again.value)
    assert context.signal_map is before


@pytest.mark.parametrize(("bad", "message"), BAD_MAPS)
def test_bad_signal_map_entry_raises_naming_it(bad: dict[Any, Any], message: str) -> None:
    _check_bad_map(bad, message, None)


@pytest.mark.parametrize(("bad", "message"), BAD_MAPS)
def test_bad_entry_among_good_ones_is_named(bad: dict[Any, Any], message: str) -> None:
    # Good entries before and after the bad one: the error names the bad one.
    mapping = {"USR1": _handler, **bad, signal.SIGUSR2: None}
    _check_bad_map(mapping, message, None)


def test_bad_value_message_names_its_signal() -> None:
    for key in ("HUP", signal.SIGHUP, int(signal.SIGHUP), "sighup"):
        _check_bad_map({key: "nope"}, "signal_map[SIGHUP]", "'nope'")
    _check_bad_map({"USR2": 7.5}, "signal_map[SIGUSR2]", "7.5")


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([("HUP", None)], id="list-of-pairs"),
        pytest.param("HUP", id="str"),
        pytest.param(5, id="int"),
        pytest.param({"HUP"}, id="set"),
    ],
)
def test_non_mapping_signal_map_raises(bad: object) -> None:
    _check_bad_map(bad, "signal_map must be a mapping", type(bad).__name__)


@pytest.mark.parametrize(
    "value",
    [signal.SIGHUP, int(signal.SIGUSR1), "USR2", "sigusr1", "SIGWINCH", None],
)
def test_good_reopen_signal_constructs(value: object) -> None:
    context = DaemonContext(reopen_signal=value)  # type: ignore[arg-type]
    assert context.reopen_signal == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(signal.SIGKILL, "SIGKILL", id="SIGKILL"),
        pytest.param("KILL", "SIGKILL", id="KILL"),
        pytest.param(signal.SIGSTOP, "SIGSTOP", id="SIGSTOP"),
        pytest.param("NOPE", "'NOPE'", id="unknown-name"),
        pytest.param(999, "999", id="unknown-number"),
        pytest.param(1.5, "1.5", id="float"),
    ],
)
def test_bad_reopen_signal_raises_at_construction(value: object, message: str) -> None:
    with pytest.raises(SignalMapError) as raised:
        DaemonContext(reopen_signal=value)  # type: ignore[arg-type]
    assert "reopen_signal" in str(raised.value)
    assert message in str(raised.value)


# -- 2. on_signal --------------------------------------------------------------


def test_on_signal_adds_to_a_copy_and_keeps_the_defaults() -> None:
    context = DaemonContext()

    def reload(signum: int, frame: FrameType | None) -> None:
        pass

    decorated = context.on_signal("HUP", signal.SIGUSR1)(reload)
    assert decorated is reload  # returned unchanged
    assert context.signal_map[signal.SIGHUP] is reload
    assert context.signal_map[signal.SIGUSR1] is reload
    assert context.signal_map[signal.SIGTERM] == "terminate"
    assert context.signal_map[signal.SIGTSTP] is None

    original = {"USR2": _handler}
    context = DaemonContext(signal_map=original)
    calls: list[str] = []

    @context.on_signal(int(signal.SIGWINCH))
    def no_args() -> None:
        calls.append("called")

    assert original == {"USR2": _handler}  # the user's dict is not mutated
    assert context.signal_map is not original
    assert context.signal_map["USR2"] is _handler
    # Stored as a (signum, frame) handler that calls the function.
    context.signal_map[signal.SIGWINCH](signal.SIGWINCH, None)
    assert calls == ["called"]


def test_on_signal_later_decorator_replaces_the_entry() -> None:
    context = DaemonContext()

    @context.on_signal("TERM")
    def graceful(signum: int, frame: FrameType | None) -> None:
        pass

    assert context.signal_map[signal.SIGTERM] is graceful


@pytest.mark.parametrize(
    ("signals", "message"),
    [
        pytest.param(("NOPE",), "'NOPE'", id="unknown-name"),
        pytest.param(("HUP", "NOPE"), "'NOPE'", id="one-of-two-unknown"),
        pytest.param((999,), "999", id="unknown-number"),
        pytest.param(("KILL",), "SIGKILL", id="KILL"),
        pytest.param((signal.SIGSTOP,), "SIGSTOP", id="SIGSTOP"),
        pytest.param((None,), "None", id="None"),
        pytest.param((), "at least one signal", id="no-signal"),
    ],
)
def test_on_signal_bad_signals_raise_at_decoration(signals: tuple[Any, ...], message: str) -> None:
    context = DaemonContext()
    before = context.signal_map
    with pytest.raises(SignalMapError) as raised:
        context.on_signal(*signals)  # raises before any function is given
    assert message in str(raised.value)
    assert "on_signal" in str(raised.value)
    assert context.signal_map is before


def _one_argument(signum: int) -> None:
    pass


def _three_arguments(signum: int, frame: FrameType | None, extra: int) -> None:
    pass


def _keyword_only(*, signum: int) -> None:
    pass


@pytest.mark.parametrize(
    ("function", "message"),
    [
        pytest.param(_one_argument, "_one_argument", id="one-argument"),
        pytest.param(_three_arguments, "_three_arguments", id="three-arguments"),
        pytest.param(_keyword_only, "_keyword_only", id="keyword-only"),
        pytest.param(42, "42 is not callable", id="not-callable"),
    ],
)
def test_on_signal_bad_function_raises_at_decoration(function: Any, message: str) -> None:
    context = DaemonContext()
    before = context.signal_map
    register = context.on_signal("USR1")
    with pytest.raises(SignalMapError) as raised:
        register(function)
    assert message in str(raised.value)
    assert context.signal_map is before


def test_on_signal_accepts_flexible_signatures() -> None:
    context = DaemonContext()

    def star_args(*args: Any) -> None:
        pass

    def defaults(signum: int = 0, frame: FrameType | None = None, extra: int = 1) -> None:
        pass

    for function in (star_args, defaults):
        assert context.on_signal("USR1")(function) is function
        assert context.signal_map[signal.SIGUSR1] is function


ON_SIGNAL_BODY = (
    RECORD
    + """
context = daemonkit.DaemonContext()

@context.on_signal("USR1", "hup")
def with_args(signum, frame):
    record(".handled", f"with_args {signum}")

@context.on_signal(signal.SIGUSR2)
def no_args():
    record(".handled", "no_args")

facts.report(REPORT + ".launcher")
with context:
    installed = {
        name: signal.getsignal(getattr(signal, name))
        for name in ("SIGUSR1", "SIGUSR2", "SIGTERM")
    }
    facts.report(
        REPORT,
        usr1_equal=installed["SIGUSR1"] == with_args,
        usr1_wrapped=getattr(installed["SIGUSR1"], "__wrapped__", None) is with_args,
        usr2_wraps=getattr(
            getattr(installed["SIGUSR2"], "__wrapped__", None), "__qualname__", None
        ),
        term_equal=installed["SIGTERM"] == context.terminate,
    )
    try:
        linger(20)
    finally:
        record(".finally", "ran")
"""
)


def test_on_signal_handlers_run_in_the_daemon(daemons: Daemons, tmp_path: Path) -> None:
    run = Supervised(daemons, tmp_path, ON_SIGNAL_BODY)
    data = run.read_report()
    pid = data["pid"]
    handled = Path(f"{run.report}.handled")

    assert data["usr1_equal"] and data["usr1_wrapped"]
    assert data["usr2_wraps"] == "no_args"
    assert data["term_equal"]
    assert data["signals"]["SIGTERM"] == "terminate"  # the default entry stayed
    assert data["signals"]["SIGTSTP"] == "ignore"

    expected: list[str] = []
    for sig, line in (
        (signal.SIGUSR1, f"with_args {int(signal.SIGUSR1)}"),
        (signal.SIGUSR2, "no_args"),
        (signal.SIGHUP, f"with_args {int(signal.SIGHUP)}"),  # after reopening
        (signal.SIGUSR2, "no_args"),
    ):
        os.kill(pid, sig)
        expected.append(line)
        lines = wait_for_lines(handled, len(expected))
        assert lines == expected, sig.name
    assert is_alive(pid)

    assert stop(pid, signal.SIGTERM)
    assert run.statuses(pid) == {"launcher": 0, str(pid): 0}
    assert read_lines(Path(f"{run.report}.finally")) == ["ran"]


# -- 3. no nested handlers ------------------------------------------------------

NO_NESTING_BODY = (
    RECORD
    + """
RELEASE = REPORT + ".release"

def slow(signum, frame):
    record(".order", "start")
    deadline = time.monotonic() + 5
    while not os.path.exists(RELEASE) and time.monotonic() < deadline:
        time.sleep(0.01)
    record(".order", "end")

def quick(signum, frame):
    record(".order", "usr2")

facts.report(REPORT + ".launcher")
with daemonkit.DaemonContext(signal_map={"USR1": slow, "USR2": quick}):
    facts.report(REPORT)
    linger(20)
"""
)


@pytest.mark.parametrize("usr2_count", [1, 2])
def test_a_handler_never_runs_inside_another(
    daemons: Daemons, tmp_path: Path, usr2_count: int
) -> None:
    launch, report = daemons.launch(NO_NESTING_BODY, timeout=10)
    track_launcher(daemons, report)
    pid = daemon_facts(daemons, launch, report)["pid"]
    assert launch.returncode == 0, launch.stderr
    order = Path(f"{report}.order")

    os.kill(pid, signal.SIGUSR1)
    assert wait_for_lines(order, 1) == ["start"]
    for _ in range(usr2_count):
        os.kill(pid, signal.SIGUSR2)
        time.sleep(0.1)
    # SIGUSR2 has arrived (its C-level handler ran), but its Python handler
    # must wait: the USR1 handler is still running.
    time.sleep(0.3)
    assert read_lines(order) == ["start"]

    Path(f"{report}.release").touch()
    assert len(wait_for_lines(order, 3)) >= 3
    time.sleep(0.2)  # a second, coalescible usr2 would have run by now
    lines = read_lines(order)
    assert lines[:3] == ["start", "end", "usr2"], lines
    assert set(lines[2:]) == {"usr2"} and len(lines) - 2 <= usr2_count, lines

    # Once it is over, handlers run normally again.
    os.kill(pid, signal.SIGUSR2)
    after = wait_for_lines(order, len(lines) + 1)
    assert after == [*lines, "usr2"]
    assert is_alive(pid)
    assert stop(pid)


# -- 4. signals during setup ----------------------------------------------------

SETUP_SIGNAL_BODY = (
    RECORD
    + """
SIGNAL = getattr(signal, sys.argv[2])

def on_hup(signum, frame):
    record(".hup", os.getpid())

def provoke():  # in each forked child: the intermediate process and the daemon
    record(".forks", os.getpid())
    os.kill(os.getpid(), SIGNAL)

context = daemonkit.DaemonContext(pidfile=daemonkit.PIDFile(REPORT + ".pid"))
context.on_signal("HUP")(on_hup)
facts.report(REPORT + ".launcher")
os.register_at_fork(after_in_child=provoke)
with context:
    facts.report(REPORT, hup_before_body=os.path.exists(REPORT + ".hup"))
    linger(20)
"""
)


def test_sighup_during_setup_is_handled_not_lost(daemons: Daemons) -> None:
    launch, report = daemons.launch(SETUP_SIGNAL_BODY, args=["SIGHUP"], timeout=10)
    track_launcher(daemons, report)
    forks = [int(pid) for pid in read_lines(Path(f"{report}.forks"))]
    for pid in forks:
        daemons.track(pid)
    data = daemon_facts(daemons, launch, report)
    pid = data["pid"]

    assert launch.returncode == 0, launch.stderr
    # The daemon sent itself SIGHUP right after its fork, long before its
    # handler existed; it survived, and the handler ran once, before the
    # with body began.
    assert pid in forks
    assert read_lines(Path(f"{report}.hup")) == [str(pid)]
    assert data["hup_before_body"] is True
    assert data["signals"]["SIGHUP"] == "reopen+on_hup"
    assert is_alive(pid)
    assert Path(f"{report}.pid").read_text() == f"{pid}\n"

    # The handler goes on working.
    os.kill(pid, signal.SIGHUP)
    assert wait_for_lines(Path(f"{report}.hup"), 2) == [str(pid)] * 2
    assert stop(pid)
    assert not Path(f"{report}.pid").exists()


def test_sigterm_during_setup_fails_the_start_cleanly(daemons: Daemons) -> None:
    launch, report = daemons.launch(SETUP_SIGNAL_BODY, args=["SIGTERM"], timeout=10)
    track_launcher(daemons, report)
    forks = [int(pid) for pid in read_lines(Path(f"{report}.forks"))]
    for pid in forks:
        daemons.track(pid)

    assert launch.returncode == 1, launch.stderr
    assert "told to stop" in launch.stderr
    assert "SystemExit(0)" in launch.stderr
    assert len(forks) == 2, forks  # the intermediate process and the daemon
    daemon = forks[-1]
    assert f"pid {daemon}" in launch.stderr
    assert wait_gone(daemon, 5.0)
    assert not report.exists()  # the with body never ran
    assert not Path(f"{report}.pid").exists()  # no pidfile left behind


# -- 5. many threads ------------------------------------------------------------

THREADED_BODY = (
    RECORD
    + """
import threading

context = daemonkit.DaemonContext(pidfile=daemonkit.PIDFile(REPORT + ".pid"))

@context.on_signal("HUP")
def on_hup():
    record(".hup", time.monotonic())

facts.report(REPORT + ".launcher")
with context:
    try:
        stop = context.stop_requested

        go = threading.Event()

        def busy():
            go.wait(10)
            count = 0
            while not stop.is_set():
                count += 1

        def sleeper():
            while True:
                time.sleep(0.2)

        threads = [threading.Thread(target=busy, name=f"busy-{n}") for n in range(10)]
        threads += [
            threading.Thread(target=sleeper, name=f"sleeper-{n}", daemon=True) for n in range(10)
        ]
        for thread in threads:
            thread.start()
        facts.report(REPORT, threads=threading.active_count())
        go.set()  # from now on, the busy threads contend for the GIL
        time.sleep(30)
        record(".slept", "through")
    finally:
        record(".finally", "ran")
"""
)


def test_signals_are_handled_promptly_with_many_threads(daemons: Daemons, tmp_path: Path) -> None:
    run = Supervised(daemons, tmp_path, THREADED_BODY)
    data = run.read_report()
    pid = data["pid"]
    hup = Path(f"{run.report}.hup")
    pidfile = Path(f"{run.report}.pid")
    assert data["threads"] >= 21  # the main thread and its 20 workers
    assert pidfile.read_text() == f"{pid}\n"
    time.sleep(0.2)  # the main thread is in its long sleep by now

    for count in range(1, 6):
        sent = time.monotonic()
        os.kill(pid, signal.SIGHUP)
        lines = wait_for_lines(hup, count, timeout=3.0)
        assert len(lines) == count, f"SIGHUP {count} not handled within 3 s"
        assert float(lines[-1]) - sent < 2.0, "handled, but late"
        time.sleep(0.05)
    assert is_alive(pid)

    assert stop(pid, signal.SIGTERM, timeout=8.0), "SIGTERM did not end the daemon"
    assert run.statuses(pid) == {"launcher": 0, str(pid): 0}
    assert read_lines(Path(f"{run.report}.finally")) == ["ran"]
    assert not Path(f"{run.report}.slept").exists()
    assert not pidfile.exists()


# -- 6. stop_requested -------------------------------------------------------------


def test_stop_request_in_process() -> None:
    request = StopRequest()
    assert not request.is_set() and not request
    assert "not set" in repr(request)

    began = time.monotonic()
    assert request.wait(0.1) is False
    assert 0.09 <= time.monotonic() - began < 2.0
    assert request.wait(0) is False
    fd = request.fileno()
    assert select.select([fd], [], [], 0)[0] == []

    results: list[bool] = []
    waiters = [threading.Thread(target=lambda: results.append(request.wait(5.0))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.1)
    assert results == []  # all still waiting
    began = time.monotonic()
    setter = threading.Thread(target=request.set)
    setter.start()
    for thread in (setter, *waiters):
        thread.join(5.0)
        assert not thread.is_alive()
    assert results == [True, True, True]
    assert time.monotonic() - began < 2.0

    assert request.is_set() and request
    assert "set" in repr(request) and "not set" not in repr(request)
    assert select.select([fd], [], [], 0)[0] == [fd]
    assert request.fileno() == fd
    began = time.monotonic()
    assert request.wait() is True  # no timeout: returns at once once set
    assert request.wait(0) is True
    assert time.monotonic() - began < 0.5


def test_stop_request_set_before_fileno_is_readable() -> None:
    request = StopRequest()
    request.set()
    fd = request.fileno()  # the pipe made after set() is readable already
    assert select.select([fd], [], [], 1.0)[0] == [fd]


STOP_REQUESTED_BODY = (
    RECORD
    + """
import select, threading

context = daemonkit.DaemonContext(signal_map={"TERM": "request_stop"})
facts.report(REPORT + ".launcher")
with context:
    stop = context.stop_requested
    rounds = {}

    def worker(name):
        count = 0
        while not stop.wait(0.05):
            count += 1
        rounds[name] = count

    def selecting():
        readable = select.select([stop.fileno()], [], [], 20)[0]
        rounds["select"] = len(readable)

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    threads.append(threading.Thread(target=selecting))
    for thread in threads:
        thread.start()
    facts.report(REPORT, set_before=stop.is_set())
    woke = stop.wait()
    for thread in threads:
        thread.join(5)
    with open(REPORT + ".stopped", "w") as out:
        json.dump(
            {
                "woke": woke,
                "alive": [t.name for t in threads if t.is_alive()],
                "rounds": rounds,
            },
            out,
        )
"""
)


def test_request_stop_winds_down_worker_threads(daemons: Daemons, tmp_path: Path) -> None:
    run = Supervised(daemons, tmp_path, STOP_REQUESTED_BODY)
    data = run.read_report()
    pid = data["pid"]
    assert data["set_before"] is False
    assert data["signals"]["SIGTERM"] == "request_stop"
    time.sleep(0.3)  # the workers go round a few times
    assert not Path(f"{run.report}.stopped").exists()

    assert stop(pid, signal.SIGTERM, timeout=8.0)
    stopped = json.loads(Path(f"{run.report}.stopped").read_text())
    assert stopped["woke"] is True
    assert stopped["alive"] == []
    rounds = stopped["rounds"]
    assert rounds.pop("select") == 1  # fileno() became readable
    assert sorted(rounds) == ["w0", "w1", "w2", "w3"]
    assert all(count >= 1 for count in rounds.values()), rounds  # they did go round
    assert run.statuses(pid) == {"launcher": 0, str(pid): 0}


# Another thread catches SIGUSR1 (pthread_kill aims it at that thread): the
# main thread, waiting on stop_requested, gets no EINTR, yet its handler
# must run at once (the wait watches the signal wakeup descriptor).
OTHER_THREAD_SIGNAL_BODY = (
    RECORD
    + """
import threading

def on_usr1(signum, frame):
    record(".usr1", f"{time.monotonic()} {threading.current_thread().name}")

def poker():
    deadline = time.monotonic() + 20
    while not os.path.exists(REPORT + ".poke") and time.monotonic() < deadline:
        time.sleep(0.01)
    record(".poked", time.monotonic())
    signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

context = daemonkit.DaemonContext(signal_map={"TERM": "request_stop", "USR1": on_usr1})
facts.report(REPORT + ".launcher")
with context:
    threading.Thread(target=poker, name="poker", daemon=True).start()
    facts.report(REPORT)
    context.stop_requested.wait()
    record(".done", "stopped")
"""
)


def test_waiting_main_thread_runs_handlers_for_other_threads_signals(
    daemons: Daemons, tmp_path: Path
) -> None:
    run = Supervised(daemons, tmp_path, OTHER_THREAD_SIGNAL_BODY)
    pid = run.read_report()["pid"]
    time.sleep(0.2)  # the main thread waits on stop_requested by now
    Path(f"{run.report}.poke").touch()

    lines = wait_for_lines(Path(f"{run.report}.usr1"), 1, timeout=3.0)
    assert len(lines) == 1, "the handler did not run while the main thread waited"
    handled, thread_name = lines[0].split()
    poked = float(read_lines(Path(f"{run.report}.poked"))[0])
    assert thread_name == "MainThread"
    assert float(handled) - poked < 1.0
    assert not Path(f"{run.report}.done").exists()  # the wait goes on

    assert stop(pid, signal.SIGTERM, timeout=8.0)
    assert read_lines(Path(f"{run.report}.done")) == ["stopped"]
    assert run.statuses(pid) == {"launcher": 0, str(pid): 0}


# -- 7. threads refused -------------------------------------------------------------

THREADS_BODY = """
import threading

def forked():
    with open(REPORT + ".forked", "a") as marker:
        marker.write(f"{os.getpid()}\\n")

release = threading.Event()
worker = threading.Thread(target=release.wait, args=(20,), name="busy-worker-7", daemon=True)
worker.start()
os.register_at_fork(before=forked)
launcher_pid = os.getpid()
try:
    with daemonkit.DaemonContext(detach_process=True, allow_threads=eval(sys.argv[2])):
        facts.report(REPORT, threads=[t.name for t in threading.enumerate()])
        linger(20)
except daemonkit.ThreadsRunningError as exc:
    with open(REPORT + ".error", "w") as marker:
        json.dump(
            {
                "pid": os.getpid(),
                "at": launcher_pid,
                "message": str(exc),
                "configuration": isinstance(exc, daemonkit.ConfigurationError),
                "value": isinstance(exc, ValueError),
            },
            marker,
        )
    raise
"""


def test_open_refuses_to_detach_while_threads_run(daemons: Daemons) -> None:
    launch, report = daemons.launch(THREADS_BODY, args=["False"], timeout=10)

    assert launch.returncode == 1
    assert "ThreadsRunningError" in launch.stderr
    error = json.loads(Path(f"{report}.error").read_text())
    assert error["pid"] == error["at"]  # raised in the launcher itself
    assert "busy-worker-7" in error["message"]
    assert "allow_threads" in error["message"]
    assert error["configuration"] and error["value"]
    assert not Path(f"{report}.forked").exists()  # nothing was ever forked
    assert not report.exists()


def test_allow_threads_lets_the_daemon_start(daemons: Daemons) -> None:
    launch, report = daemons.launch(THREADS_BODY, args=["True"], timeout=10)
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert not Path(f"{report}.error").exists()
    assert Path(f"{report}.forked").exists()
    # The thread did not survive the fork, as the error would have warned.
    assert data["threads"] == ["MainThread"]
    assert is_alive(data["pid"])
    assert stop(data["pid"])


# -- found by review: the intermediate process, raising handlers, getsignal ----

MIDDLE_SIGNAL_BODY = (
    RECORD
    + """
def on_int(signum, frame):
    record(".int", os.getpid())

def provoke():  # in the intermediate process and in the daemon, right after fork
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGHUP)

facts.report(REPORT + ".launcher")
context = daemonkit.DaemonContext(signal_map={"INT": on_int, "TERM": "terminate"})
os.register_at_fork(after_in_child=provoke)
try:
    with context:
        facts.report(REPORT)
        linger(20)
except KeyboardInterrupt:
    record(".escaped", os.getpid())
    raise
"""
)


def test_signals_in_the_intermediate_process_stay_blocked(daemons: Daemons, tmp_path: Path) -> None:
    """The intermediate process runs no handler: it neither dies nor raises."""
    run = Supervised(daemons, tmp_path, MIDDLE_SIGNAL_BODY)
    data = run.read_report()
    pid = data["pid"]
    assert wait_for_lines(Path(f"{run.report}.int"), 1) == [str(pid)]  # the daemon's only
    assert is_alive(pid)
    assert stop(pid)
    # statuses() also checks that the intermediate process exited 0.
    assert run.statuses(pid) == {"launcher": 0, str(pid): 0}
    assert not Path(f"{run.report}.escaped").exists()
    assert "KeyboardInterrupt" not in run.stderr.read_text()


RAISING_HANDLER_BODY = (
    RECORD
    + """
class Reload(Exception):
    pass

def on_usr1(signum, frame):
    record(".order", "usr1")
    time.sleep(0.5)  # SIGTERM arrives meanwhile and is queued
    raise Reload()

facts.report(REPORT + ".launcher")
with daemonkit.DaemonContext(signal_map={"USR1": on_usr1, "TERM": "terminate"}):
    facts.report(REPORT)
    try:
        while True:
            try:
                time.sleep(0.05)
            except Reload:
                record(".order", "reloaded")
    finally:
        record(".order", "finally")
"""
)


def test_a_signal_queued_behind_a_raising_handler_is_not_lost(
    daemons: Daemons, tmp_path: Path
) -> None:
    run = Supervised(daemons, tmp_path, RAISING_HANDLER_BODY)
    pid = run.read_report()["pid"]
    order = Path(f"{run.report}.order")
    os.kill(pid, signal.SIGUSR1)
    assert wait_for_lines(order, 1) == ["usr1"]
    os.kill(pid, signal.SIGTERM)  # once: it must be enough
    assert wait_gone(pid, 5.0), read_lines(order)
    assert read_lines(order)[-1] == "finally"
    assert run.statuses(pid) == {"launcher": 0, str(pid): 0}


GETSIGNAL_BODY = """
def on_hup(signum, frame):
    pass

def on_usr1(signum, frame):
    pass

context = daemonkit.DaemonContext(
    detach_process=False, signal_map={"HUP": on_hup, "USR1": on_usr1, "TERM": "terminate"}
)
with context:
    json.dump(
        {
            "HUP": signal.getsignal(signal.SIGHUP) == on_hup,
            "USR1": signal.getsignal(signal.SIGUSR1) == on_usr1,
            "TERM": signal.getsignal(signal.SIGTERM) == context.terminate,
            "HUP is not USR1": signal.getsignal(signal.SIGHUP) != on_usr1,
        },
        open(REPORT, "w"),
    )
"""


def test_getsignal_compares_equal_to_the_mapped_handler(daemons: Daemons) -> None:
    """Even for SIGHUP, whose installed handler reopens log files first."""
    launch, report = daemons.launch(GETSIGNAL_BODY)
    assert launch.returncode == 0, launch.stderr
    assert json.loads(report.read_text()) == {
        "HUP": True,
        "USR1": True,
        "TERM": True,
        "HUP is not USR1": True,
    }


SLOW_RELEASE_BODY = (
    RECORD
    + """
class SlowPidfile:  # lockfile-style: entered in the daemon, left in close()
    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        record(".order", "release begins")
        time.sleep(0.5)  # the second SIGTERM arrives now
        record(".order", "release done")

facts.report(REPORT + ".launcher")
with daemonkit.DaemonContext(pidfile=SlowPidfile()):
    facts.report(REPORT)
    linger(20)
"""
)


def test_a_second_sigterm_does_not_cut_the_pidfile_release_short(
    daemons: Daemons, tmp_path: Path
) -> None:
    run = Supervised(daemons, tmp_path, SLOW_RELEASE_BODY)
    pid = run.read_report()["pid"]
    order = Path(f"{run.report}.order")
    os.kill(pid, signal.SIGTERM)
    assert wait_for_lines(order, 1) == ["release begins"]
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid, 5.0)
    assert read_lines(order) == ["release begins", "release done"]
    assert run.statuses(pid) == {"launcher": 0, str(pid): 0}
