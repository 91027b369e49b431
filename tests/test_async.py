"""``daemonkit.run_async``: an asyncio main loop in a real daemon.

Every daemon here runs a coroutine under ``run_async`` inside its
``DaemonContext`` and records what happens as timestamped marks (one line
each, ``time.monotonic()`` first: the clock is the same in every process).
The tests check that the daemon's signal handlers run as loop callbacks,
promptly even while the coroutine awaits a long sleep; that SIGTERM
cancels the coroutine, whose cleanup runs, and then exits 0; and that the
daemon's own handlers are back once the loop is gone.

The launcher is started under a small subreaper that adopts the daemon,
so the daemon's real exit status (and the moment the launcher left) can be
known.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
from conftest import Daemons, Supervised, read_text, wait_gone, wait_until
from test_signals import kernel_dispositions

import daemonkit

# Added to every daemon script after conftest's prelude.
MARKS = """\
import asyncio


def mark(text):
    with open(REPORT + ".marks", "a") as out:
        out.write(f"{time.monotonic():.6f} {text}\\n")


def dump(name, data):
    with open(f"{REPORT}.{name}.tmp", "w") as out:
        json.dump(data, out)
    os.rename(f"{REPORT}.{name}.tmp", f"{REPORT}.{name}")

"""

# How run_async ends: the SystemExit out of it, or its return value.
RUN_ASYNC = """\
try:
    result = daemonkit.run_async(main())
except SystemExit as exc:
    mark(f"SystemExit {exc.code!r}")
    raise
mark(f"returned {result!r}")
"""

# The same, as the with body of a daemon.
RUN_MAIN = 'facts.report(REPORT + ".launcher")\nwith context:\n' + textwrap.indent(
    RUN_ASYNC, "    "
)


class Reaped(Supervised):
    """A ``Supervised`` daemon script with ``mark()`` and ``dump()`` defined."""

    def __init__(
        self, daemons: Daemons, tmp_path: Path, body: str, args: list[str] | None = None
    ) -> None:
        super().__init__(daemons, tmp_path, MARKS + body, args)


def marks(report: Path) -> list[tuple[float, str]]:
    """The daemon's marks so far: (monotonic time, text), in order."""
    found = []
    for line in read_text(Path(f"{report}.marks")).splitlines():
        stamp, _, text = line.partition(" ")
        found.append((float(stamp), text))
    return found


def texts(report: Path) -> list[str]:
    return [text for _, text in marks(report)]


def when(report: Path, text: str) -> float:
    """The time of the first mark ``text``."""
    for stamp, found in marks(report):
        if found == text:
            return stamp
    pytest.fail(f"no mark {text!r} in {texts(report)}")


def wait_for_mark(report: Path, text: str, count: int = 1, timeout: float = 5.0) -> bool:
    """Wait until the daemon has marked ``text`` at least ``count`` times."""
    return wait_until(lambda: texts(report).count(text) >= count, timeout)


def terminate(run: Reaped, pid: int) -> dict[str, int]:
    """SIGTERM the daemon; its exit status and the launcher's."""
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid, 10.0), f"the daemon outlived SIGTERM: {texts(run.report)}"
    statuses, _ = run.finish(pid)
    return statuses


# -- 1. a served daemon: readiness, SIGHUP while awaiting, SIGTERM ----------------

SERVICE = """\
context = daemonkit.DaemonContext(
    pidfile=daemonkit.PIDFile(REPORT + ".pid"),
    wait_ready=True,
    stderr=REPORT + ".log",
)
hups = 0


@context.on_signal("HUP")
def on_hup():
    global hups
    hups += 1
    print(f"hup {hups}", file=sys.stderr, flush=True)
    dump("hups", hups)


async def bystander():
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        mark("bystander cancelled")
        raise


async def main():
    mark("main started")
    helper = asyncio.create_task(bystander())
    await asyncio.sleep(0.3)  # binding, connecting, loading...
    mark("ready")
    daemonkit.ready()
    facts.report(REPORT)
    try:
        while not helper.done():
            mark("long await")
            await asyncio.sleep(30)
    finally:
        mark("finally")

"""


def test_served_daemon_is_ready_handles_sighup_while_awaiting_and_stops_cleanly(
    daemons: Daemons, tmp_path: Path
) -> None:
    run = Reaped(daemons, tmp_path, SERVICE + RUN_MAIN)
    data = run.read_report()
    pid, report = data["pid"], run.report
    pidfile, log, hups = Path(f"{report}.pid"), Path(f"{report}.log"), Path(f"{report}.hups")

    assert pidfile.read_text() == f"{pid}\n"
    assert wait_for_mark(report, "long await"), texts(report)

    # Rotate the log; each SIGHUP reopens it, then runs the handler, while
    # the coroutine is stuck in a 30 s sleep: the loop must wake up for it.
    log.rename(f"{log}.1")
    for count in (1, 2, 3):
        os.kill(pid, signal.SIGHUP)
        assert wait_until(lambda n=count: read_text(hups) == str(n)), (
            read_text(hups),
            run.diagnostics(),
        )
    assert read_text(log) == "hup 1\nhup 2\nhup 3\n"
    assert read_text(Path(f"{log}.1")) == ""
    assert texts(report).count("long await") == 1, "the 30 s sleep ended early"
    assert "finally" not in texts(report)

    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid, 10.0), f"the daemon outlived SIGTERM: {texts(report)}"
    statuses, launcher_ended = run.finish(pid)

    assert statuses == {"launcher": 0, str(pid): 0}, run.diagnostics()
    assert texts(report) == [
        "main started",
        "ready",
        "long await",
        "finally",
        "bystander cancelled",
        "SystemExit 0",
    ]
    # The launcher left only after ready(), which came 0.3 s after the start.
    assert when(report, "ready") - when(report, "main started") >= 0.3
    assert launcher_ended >= when(report, "ready")
    assert not pidfile.exists()
    assert read_text(log) == "hup 1\nhup 2\nhup 3\n", "something was logged at shutdown"


# -- 2, 3, 5. handlers of a daemon waiting in one long await ---------------------

WAITING = """\
LOOPS = []


async def main():
    LOOPS.append(asyncio.get_running_loop())
    mark("serving")
    facts.report(REPORT)
    try:
        await asyncio.sleep(3600)
    finally:
        mark("finally")

"""


def waiting_daemon(handlers: str) -> str:
    """A daemon whose coroutine awaits one long sleep, with ``handlers``."""
    context = 'context = daemonkit.DaemonContext(stderr=REPORT + ".log")\n'
    return context + handlers + WAITING + RUN_MAIN


def start_waiting(daemons: Daemons, tmp_path: Path, body: str) -> tuple[Reaped, int]:
    run = Reaped(daemons, tmp_path, body)
    pid = run.read_report()["pid"]
    assert wait_for_mark(run.report, "serving"), run.diagnostics()
    return run, pid


COROUTINE_HANDLER = """\
@context.on_signal("USR1")
async def on_usr1():
    await asyncio.sleep(0)
    in_task = asyncio.current_task() is not None
    mark(f"usr1 in task {in_task}")

"""


def test_coroutine_function_handler_runs_as_a_task(daemons: Daemons, tmp_path: Path) -> None:
    run, pid = start_waiting(daemons, tmp_path, waiting_daemon(COROUTINE_HANDLER))
    report = run.report

    for count in (1, 2):
        os.kill(pid, signal.SIGUSR1)
        assert wait_for_mark(report, "usr1 in task True", count), (
            texts(report),
            run.diagnostics(),
        )

    statuses = terminate(run, pid)
    assert statuses == {"launcher": 0, str(pid): 0}, run.diagnostics()
    assert texts(report) == [
        "serving",
        "usr1 in task True",
        "usr1 in task True",
        "finally",
        "SystemExit 0",
    ]
    # No "coroutine was never awaited", no dispatcher warning.
    assert read_text(Path(f"{report}.log")) == ""


LOOP_HANDLERS = """\
import traceback


def on_usr1(signum, frame):
    loop = asyncio.get_running_loop()
    callers = [
        (os.path.basename(entry.filename), entry.name) for entry in traceback.extract_stack()
    ]
    dump("usr1", {
        "signum": signum,
        "frame_is_none": frame is None,
        "loop": repr(loop),
        "main_loop": repr(LOOPS[0]),
        "same_loop": loop is LOOPS[0],
        "running": loop.is_running(),
        "callers": callers,
    })
    mark("usr1 begins")
    time.sleep(0.5)  # a second signal arrives meanwhile: it must wait
    mark("usr1 ends")


def on_usr2(signum, frame):
    mark("usr2")


context.signal_map = {**context.signal_map, "USR1": on_usr1, "USR2": on_usr2}

"""


def test_handlers_run_as_loop_callbacks(daemons: Daemons, tmp_path: Path) -> None:
    run, pid = start_waiting(daemons, tmp_path, waiting_daemon(LOOP_HANDLERS))
    report = run.report

    os.kill(pid, signal.SIGUSR1)
    assert wait_for_mark(report, "usr1 begins"), (texts(report), run.diagnostics())
    os.kill(pid, signal.SIGUSR2)
    assert wait_for_mark(report, "usr2"), (texts(report), run.diagnostics())

    usr1 = json.loads(read_text(Path(f"{report}.usr1")))
    assert usr1["signum"] == signal.SIGUSR1
    assert usr1["same_loop"], usr1
    assert usr1["running"]
    assert usr1["frame_is_none"]  # a loop callback has no interrupted frame
    callers = [tuple(caller) for caller in usr1["callers"]]
    # Called from a loop Handle, not from inside the selector's wait.
    assert ("events.py", "_run") in callers, callers
    assert ("selectors.py", "select") not in callers, callers
    # The second handler ran after the first one, not inside it.
    assert texts(report) == ["serving", "usr1 begins", "usr1 ends", "usr2"]

    statuses = terminate(run, pid)
    assert statuses == {"launcher": 0, str(pid): 0}, run.diagnostics()
    assert texts(report)[-2:] == ["finally", "SystemExit 0"]


SWALLOWING = """\
context = daemonkit.DaemonContext(stderr=REPORT + ".log")


async def main():
    mark("serving")
    facts.report(REPORT)
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        mark("swallowed")
        return "swallowed"
    return "slept"

"""


def test_sigterm_exits_zero_even_if_the_coroutine_swallows_the_cancellation(
    daemons: Daemons, tmp_path: Path
) -> None:
    run, pid = start_waiting(daemons, tmp_path, SWALLOWING + RUN_MAIN)

    statuses = terminate(run, pid)

    assert statuses == {"launcher": 0, str(pid): 0}, run.diagnostics()
    assert texts(run.report) == ["serving", "swallowed", "SystemExit 0"]


# -- 4. after the loop: the daemon's own handlers are back -----------------------

RETURNING = """\
context = daemonkit.DaemonContext(stderr=REPORT + ".log")


@context.on_signal("HUP")
def on_hup(signum, frame):
    mark("hup")


async def main():
    mark("main")
    await asyncio.sleep(0.05)
    return {"answer": 42}


def handlers():
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup, warn_on_full_buffer=False)
    return {
        "sigterm_is_terminate": signal.getsignal(signal.SIGTERM) == context.terminate,
        "sigterm": type(signal.getsignal(signal.SIGTERM)).__name__,
        "sighup": type(signal.getsignal(signal.SIGHUP)).__name__,
        "wakeup": os.readlink(f"/proc/self/fd/{wakeup}") if wakeup >= 0 else None,
    }


facts.report(REPORT + ".launcher")
with context:
    context.stop_requested.wait(0)  # the dispatcher's wakeup pipe is made on first use
    before = handlers()
    result = daemonkit.run_async(main())
    facts.report(REPORT, result=result, before=before, after=handlers())
    try:
        linger()
    except SystemExit as exc:
        mark(f"SystemExit {exc.code!r}")
        raise
"""


def test_normal_return_gives_the_value_and_reinstalls_the_handlers(
    daemons: Daemons, tmp_path: Path
) -> None:
    run = Reaped(daemons, tmp_path, RETURNING)
    data = run.read_report()
    pid, report = data["pid"], run.report

    assert data["result"] == {"answer": 42}
    assert data["after"] == data["before"], data
    assert data["after"]["sigterm_is_terminate"]
    assert data["after"]["sigterm"] == data["after"]["sighup"] == "Dispatched"
    # The wakeup descriptor is the dispatcher's pipe again, not the closed
    # loop's socket (nor unset), as it was before the loop ran.
    assert str(data["after"]["wakeup"]).startswith("pipe:"), data["after"]
    assert data["signals"]["SIGTERM"] == "terminate"
    assert data["signals"]["SIGHUP"] == "reopen+on_hup"
    _, caught = kernel_dispositions(pid)
    assert {signal.SIGTERM, signal.SIGHUP} <= caught

    # Both work, now through the dispatcher.
    os.kill(pid, signal.SIGHUP)
    assert wait_for_mark(report, "hup"), (texts(report), run.diagnostics())
    statuses = terminate(run, pid)
    assert statuses == {"launcher": 0, str(pid): 0}, run.diagnostics()
    assert texts(report) == ["main", "hup", "SystemExit 0"]


# -- 6. outside a DaemonContext --------------------------------------------------

PLAIN = """\
async def main():
    try:
        mark("serving")
        await asyncio.sleep(3600)
    finally:
        mark("finally")


"""


def test_sigterm_outside_a_daemon_context(daemons: Daemons, tmp_path: Path) -> None:
    command, report = daemons.script_command(MARKS + PLAIN + RUN_ASYNC)
    stderr = tmp_path / "plain.stderr"
    with open(stderr, "w") as err:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=err, cwd=tmp_path)
    daemons.track(proc.pid)
    try:
        assert wait_for_mark(report, "serving"), read_text(stderr)
        proc.send_signal(signal.SIGTERM)
        returncode = proc.wait(timeout=10)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()

    assert returncode == 0, read_text(stderr)
    assert texts(report) == ["serving", "finally", "SystemExit 0"]
    assert read_text(stderr) == ""


def test_run_async_needs_a_coroutine() -> None:
    def some_function() -> int:
        return 1

    async def coroutine_function() -> int:
        return 1

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TypeError, match="coroutine"):
        daemonkit.run_async(some_function)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="coroutine"):
        daemonkit.run_async(coroutine_function)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="coroutine"):
        daemonkit.run_async(some_function())  # type: ignore[arg-type]
    assert signal.getsignal(signal.SIGTERM) is before
    # And a real coroutine runs, here too.
    assert daemonkit.run_async(coroutine_function()) == 1
    assert signal.getsignal(signal.SIGTERM) is before


# -- 7. SIGTERM mapped to request_stop: the coroutine winds down by itself -------

STOPPING = """\
context = daemonkit.DaemonContext(
    stderr=REPORT + ".log", signal_map={"SIGTERM": "request_stop"}
)


async def poll():
    while not context.stop_requested.is_set():
        await asyncio.sleep(0.05)


async def reader():
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    fd = context.stop_requested.fileno()
    loop.add_reader(fd, stopped.set)
    try:
        await stopped.wait()
    finally:
        loop.remove_reader(fd)


async def main():
    mark("serving")
    facts.report(REPORT)
    try:
        await {"poll": poll, "reader": reader}[sys.argv[2]]()
        mark("stop requested")
        await asyncio.sleep(0.2)  # winding down: it was not cancelled
        mark("shutdown")
    except asyncio.CancelledError:
        mark("cancelled")
        raise
    return "done"

"""


@pytest.mark.parametrize("how", ["poll", "reader"])
def test_request_stop_lets_the_coroutine_wind_down(
    daemons: Daemons, tmp_path: Path, how: str
) -> None:
    run = Reaped(daemons, tmp_path, STOPPING + RUN_MAIN, args=[how])
    data = run.read_report()
    pid, report = data["pid"], run.report
    assert wait_for_mark(report, "serving"), run.diagnostics()

    statuses = terminate(run, pid)

    assert statuses == {"launcher": 0, str(pid): 0}, run.diagnostics()
    assert texts(report) == ["serving", "stop requested", "shutdown", "returned 'done'"]
    assert when(report, "shutdown") - when(report, "stop requested") >= 0.2


STORM = """\
async def tick():
    await asyncio.sleep(0)


HANDLED = []
context = daemonkit.DaemonContext(
    detach_process=False,
    stderr=REPORT + ".stderr",
    signal_map={"HUP": lambda signum, frame: HANDLED.append(signum)},
)
with context:
    mark("serving")
    for _ in range(3000):
        daemonkit.run_async(tick())
    mark(f"survived, handled {len(HANDLED) > 0}")
    os.kill(os.getpid(), signal.SIGSTOP)  # wait here, stopped, to be killed
"""


def test_signals_between_loops_reach_the_daemon_handlers(daemons: Daemons, tmp_path: Path) -> None:
    """Handing signals to each loop and back leaves no instant at SIG_DFL."""
    command, report = daemons.script_command(MARKS + STORM)
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, cwd=tmp_path)
    daemons.track(proc.pid)
    try:
        assert wait_for_mark(report, "serving")
        sent = 0
        deadline = time.monotonic() + 60
        while proc.poll() is None and len(texts(report)) < 2 and time.monotonic() < deadline:
            proc.send_signal(signal.SIGHUP)
            sent += 1
            time.sleep(0.0005)
        assert proc.poll() is None, f"killed (status {proc.returncode}) after {sent} SIGHUPs"
        assert texts(report) == ["serving", "survived, handled True"]
        assert sent > 100, "setup: the storm was too short to mean anything"
    finally:
        proc.kill()
        proc.wait()


PRIOR = """\
def mine(signum, frame):
    pass


signal.signal(signal.SIGTERM, mine)
signal.signal(signal.SIGHUP, signal.SIG_IGN)


async def main():
    return 7


result = daemonkit.run_async(main())
dump("after", {
    "result": result,
    "SIGTERM": signal.getsignal(signal.SIGTERM) is mine,
    "SIGHUP": signal.getsignal(signal.SIGHUP) == signal.SIG_IGN,
})
"""


def test_outside_a_context_the_program_handlers_come_back(daemons: Daemons) -> None:
    launch, report = daemons.launch(MARKS + PRIOR)
    assert launch.returncode == 0, launch.stderr
    after = json.loads(Path(f"{report}.after").read_text())
    assert after == {"result": 7, "SIGTERM": True, "SIGHUP": True}
