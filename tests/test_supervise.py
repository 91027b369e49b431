"""The Supervisor and ``daemonkit run`` in the foreground, with real processes.

Every program here is a small Python script that first appends a line
``PID START_TIME MONOTONIC start`` to a log (and a line per event after that:
a signal it trapped, "ready", "end"...). The log is the test's view of what
happened: how many runs there were, when each began (CLOCK_MONOTONIC, the
clock the supervisor's backoff uses too), which signals arrived. The ``runs``
fixture kills, by pid and kernel start time, any logged process still alive
at teardown; supervisors started as commands are tracked by the ``daemons``
fixture, and a PID namespace is ended by killing its PID 1.

The library API runs in the test process (or a forked test process for
callable targets); ``daemonkit run`` runs as ``python -m daemonkit``, and the
PID 1 duty inside ``unshare --pid --fork --mount-proc``.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemons, clean_env, start_time, wait_gone, wait_until
from test_cli import DAEMONKIT, NOTIFY

from daemonkit import ConfigurationError, Supervisor
from daemonkit.notify import NotifySocketReceiver

pytestmark = pytest.mark.timeout(30)

# No site-packages and no user environment: the programs start in ~15 ms.
PYTHON = (sys.executable, "-I", "-S")

# argv[1] is the log. note(WHAT) appends "PID START_TIME MONOTONIC WHAT";
# count(WHAT) is how many such lines the log holds (this run's included).
PRELUDE = """\
import os, signal, sys, time
LOG = sys.argv[1]


def note(what):
    with open(f"/proc/{os.getpid()}/stat") as stat:
        started = stat.read().rsplit(")", 1)[1].split()[19]
    with open(LOG, "a") as log:
        log.write(f"{os.getpid()} {started} {time.monotonic()!r} {what}\\n")


def count(what):
    with open(LOG) as log:
        return sum(1 for line in log if line.split()[3:] == [what])


def linger(seconds=20.0, until=lambda: False):
    # short sleeps: a handler runs soon after its signal, and until() is seen
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not until():
        time.sleep(0.02)


note("start")
"""

# argv: LOG HOW N: exits with status N (HOW=exit) or kills itself with signal N (HOW=kill).
ENDS = (
    PRELUDE
    + """\
how, number = sys.argv[2], int(sys.argv[3])
if how == "kill":
    os.kill(os.getpid(), number)
    linger()
sys.exit(number)
"""
)

# argv: LOG: runs (up to 20 s) with every signal at its default disposition.
RUNS_ON = PRELUDE + "linger()\n"

# argv: LOG N: fails (exit 1) on its first N runs, then exits 0.
FAILS_N_TIMES = PRELUDE + "sys.exit(1 if count('start') <= int(sys.argv[2]) else 0)\n"

# argv: LOG SECONDS: run 4 stays up SECONDS; runs 1 to 5 then fail, run 6 exits 0.
FOURTH_RUN_IS_LONG = (
    PRELUDE
    + """\
run = count("start")
if run == 4:
    time.sleep(float(sys.argv[2]))
note("end")
sys.exit(0 if run >= 6 else 1)
"""
)

# argv: LOG CODE: on SIGTERM, notes it and exits CODE.
ON_TERM = (
    PRELUDE
    + """\
def on_term(signum, frame):
    note("SIGTERM")
    sys.exit(int(sys.argv[2]))


signal.signal(signal.SIGTERM, on_term)
note("ready")
linger()
"""
)

FORWARDED_NAMES = ("SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH", "SIGINT", "SIGQUIT", "SIGTERM")

# argv: LOG: notes each forwarded signal by name; exits 0 once all seven came.
TRAPS_ALL = (
    PRELUDE
    + f"NAMES = {list(FORWARDED_NAMES)!r}\n"
    + """\
seen = set()


def record(signum, frame):
    seen.add(signal.Signals(signum).name)
    note(signal.Signals(signum).name)


for name in NAMES:
    signal.signal(getattr(signal, name), record)
note("ready")
linger(until=lambda: len(seen) == len(NAMES))
"""
)

# argv: LOG [child]: a program whose child stays in its process group; both
# note SIGUSR1. Once it had SIGUSR1 the program gives the child 0.5 s to get
# it too, ends the child if not, and exits 0.
WITH_CHILD = (
    PRELUDE
    + """\
got = []


def record(signum, frame):
    got.append(signum)
    note("SIGUSR1")


signal.signal(signal.SIGUSR1, record)
if sys.argv[2:] == ["child"]:
    note("ready")
    linger(until=lambda: got)
    sys.exit(0)
import subprocess
child = subprocess.Popen([sys.executable, "-I", "-S", sys.argv[0], LOG, "child"])
note("ready")
linger(until=lambda: got)
time.sleep(0.5)
child.kill()
child.wait()
"""
)

# argv: LOG N SECONDS: leaves N orphans (a double fork) that live SECONDS, then runs on.
LEAVES_ORPHANS = (
    PRELUDE
    + """\
for _ in range(int(sys.argv[2])):
    middle = os.fork()
    if middle == 0:
        if os.fork() == 0:
            note("orphan")
            time.sleep(float(sys.argv[3]))
            os._exit(0)
        os._exit(0)
    os.waitpid(middle, 0)
note("spawned")
linger()
"""
)

# argv: LOG ORPHAN_GO PROGRAM_GO: leaves one orphan; each exits once its file exists.
ORPHAN_WAITS = (
    PRELUDE
    + """\
orphan_go, program_go = sys.argv[2], sys.argv[3]
middle = os.fork()
if middle == 0:
    if os.fork() == 0:
        note("orphan")
        linger(until=lambda: os.path.exists(orphan_go))
        os._exit(0)
    os._exit(0)
os.waitpid(middle, 0)
note("spawned")
linger(until=lambda: os.path.exists(program_go))
"""
)

# argv: LOG: says READY=1 (with a STATUS=), then fails 0.3 s later.
READY_THEN_FAILS = (
    PRELUDE
    + NOTIFY
    + """\
notify("READY=1\\nSTATUS=serving")
time.sleep(0.3)
note("end")
sys.exit(1)
"""
)

# argv: LOG: never says READY=1; on SIGTERM notes it and exits 1. Run 3 exits 0 at once.
NEVER_READY = (
    PRELUDE
    + """\
if count("start") >= 3:
    sys.exit(0)


def on_term(signum, frame):
    note("SIGTERM")
    sys.exit(1)


signal.signal(signal.SIGTERM, on_term)
linger()
"""
)


@dataclass
class Entry:
    """One line of a program log."""

    pid: int
    started: int  # kernel start time (clock ticks): a reused pid has another
    at: float  # CLOCK_MONOTONIC
    what: str


class Runs:
    """The log the programs of one test append to, and the scripts that write it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "runs.log"
        self.scripts = 0
        self.host_pids = True  # False: the pids are a PID namespace's, not ours

    def command(self, body: str, *args: object) -> list[str]:
        """Write ``body`` as a script; the command line that runs it (log first)."""
        self.scripts += 1
        script = self.folder / f"program_{self.scripts}.py"
        script.write_text(body)
        return [*PYTHON, str(script), str(self.path), *map(str, args)]

    def entries(self, what: str | None = None) -> list[Entry]:
        """The complete lines so far (those saying ``what``, if given)."""
        text = self.path.read_text() if self.path.exists() else ""
        found = []
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                continue  # still being written
            pid, started, at, said = line.split(maxsplit=3)
            entry = Entry(int(pid), int(started), float(at), said.strip())
            if what is None or entry.what == what:
                found.append(entry)
        return found

    def starts(self) -> list[float]:
        """When each run began (CLOCK_MONOTONIC)."""
        return [entry.at for entry in self.entries("start")]

    def wait_for(self, what: str, count: int = 1, timeout: float = 10.0) -> list[Entry]:
        """Wait until ``count`` lines say ``what``; those lines."""
        if not wait_until(lambda: len(self.entries(what)) >= count, timeout):
            pytest.fail(f"fewer than {count} {what!r} lines in {timeout} s: {self.entries()}")
        return self.entries(what)


@pytest.fixture
def runs(daemons: Daemons, tmp_path: Path) -> Iterator[Runs]:
    """A program log; at teardown every logged process still alive is killed by pid."""
    log = Runs(tmp_path)
    try:
        yield log
    finally:
        if log.host_pids:
            for entry in log.entries():
                if start_time(entry.pid) == entry.started:
                    daemons.track(entry.pid)  # killed by the daemons fixture, next


class Launched:
    """``[PREFIX] python -m daemonkit ARGS`` started (and tracked) without waiting.

    Its output goes to a file, not a pipe: a program left running would keep
    a pipe open, and waiting for the pipe's end would wait for the program.
    """

    def __init__(
        self, daemons: Daemons, tmp_path: Path, *args: object, prefix: Sequence[str] = ()
    ) -> None:
        self.output = tmp_path / f"output_{len(daemons.tracked)}.txt"
        with open(self.output, "w") as file:
            self.proc = subprocess.Popen(
                [*prefix, *DAEMONKIT, *map(str, args)],
                stdin=subprocess.DEVNULL,
                stdout=file,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
                env=clean_env(),
            )
        self.pid = self.proc.pid
        daemons.track(self.pid)

    def finish(self, timeout: float = 20.0) -> tuple[int, str]:
        """Its exit status (as Popen gives it) and its output, once it has exited."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"{self.proc.args!r} still ran after {timeout} s: {self.output.read_text()}"
            )
        return self.proc.returncode, self.output.read_text()


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def assert_delays(measured: list[float], delays: Sequence[float]) -> None:
    """Each measured gap is at least ~its delay, and not much more (0.5 s of slack)."""
    assert len(measured) == len(delays), (measured, delays)
    for gap, delay in zip(measured, delays, strict=True):
        assert delay * 0.9 <= gap <= delay + 0.5, (measured, delays)


def children(pid: int) -> list[int]:
    """The children of ``pid``, zombies included (``/proc/PID/task/*/children``)."""
    found: set[int] = set()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                found.update(int(word) for word in listing.read().split())
        except OSError:
            continue
    return sorted(found)


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def status_field(pid: int, field: str) -> str | None:
    """A field of ``/proc/PID/status`` (``State``, ``PPid``, ``NSpid``), None if gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key == field:
                    return value.strip()
    except OSError:
        return None
    return None


def process_state(pid: int) -> str | None:
    """The one-letter state (``Z`` for a zombie), None if gone."""
    value = status_field(pid, "State")
    return value.split()[0] if value else None


def innermost_pid(pid: int) -> int:
    """The pid that process (host pid ``pid``) has in its own PID namespace."""
    value = status_field(pid, "NSpid")
    assert value, f"no NSpid for {pid}"
    return int(value.split()[-1])


def _can_unshare_pid() -> bool:
    try:
        return (
            subprocess.run(
                ["unshare", "--pid", "--fork", "--mount-proc", "true"],
                capture_output=True,
                timeout=20,
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False


needs_pid_namespace = pytest.mark.skipif(
    not _can_unshare_pid(), reason="unshare --pid --fork --mount-proc does not work here"
)
UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc")


def namespace_init(daemons: Daemons, unshare: Launched) -> int:
    """The host pid of the new namespace's PID 1 (unshare's forked child), tracked."""
    deadline = time.monotonic() + 10
    while not (found := children(unshare.pid)):
        if unshare.proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"unshare made no child: {unshare.output.read_text()}")
        time.sleep(0.005)
    init = found[0]
    daemons.track(init)  # SIGKILL to it ends the whole namespace
    assert innermost_pid(init) == 1, status_field(init, "NSpid")
    return init


def send_each_signal(target: int, log: Runs) -> None:
    """Send every forwarded signal to ``target``; the program must note each."""
    log.wait_for("ready")  # the program's handlers (and so the supervisor's) are set
    for name in FORWARDED_NAMES:
        os.kill(target, getattr(signal, name))
        log.wait_for(name, timeout=5)


# --- backoff and the start limit (the library API) ----------------------------


def test_backoff_doubles_up_to_its_cap_then_the_start_limit_gives_up(runs: Runs) -> None:
    """A program failing at once is restarted after 0.1, 0.2, 0.4 and 0.4 s
    (doubling, capped at backoff[1]); the 5th failure is the 5th restart in
    30 s, over max_restarts=4: supervision gives up with the last status."""
    said: list[str] = []
    supervisor = Supervisor(
        runs.command(ENDS, "exit", 1),
        respawn="on-failure",
        backoff=(0.1, 0.4),
        max_restarts=4,
        within=30,
        say=said.append,
    )
    assert supervisor.run() == 1
    assert_delays(gaps(runs.starts()), (0.1, 0.2, 0.4, 0.4))
    assert supervisor.starts == 5
    assert any("giving up" in line for line in said), said
    assert [line for line in said if line.startswith("restarting")] == [
        "restarting in 0.1 s",
        "restarting in 0.2 s",
        "restarting in 0.4 s",
        "restarting in 0.4 s",
    ]


def test_start_limit_stops_a_crash_loop(runs: Runs) -> None:
    """max_restarts=2 within 5 s, no delay: three starts, then the program's
    own exit status is returned (not hidden behind a generic 1)."""
    said: list[str] = []
    supervisor = Supervisor(
        runs.command(ENDS, "exit", 3),
        respawn="on-failure",
        backoff=(0, 0),
        max_restarts=2,
        within=5,
        say=said.append,
    )
    assert supervisor.run() == 3
    assert len(runs.starts()) == 3
    assert any("giving up" in line for line in said), said


def test_restarts_older_than_the_window_do_not_count(runs: Runs) -> None:
    """With restarts 0.4 s apart and a 0.3 s window, max_restarts=1 is never
    exceeded: the program runs until it succeeds on its 4th run."""
    supervisor = Supervisor(
        runs.command(FAILS_N_TIMES, 3),
        respawn="on-failure",
        backoff=(0.4, 0.4),
        max_restarts=1,
        within=0.3,
        say=lambda text: None,
    )
    assert supervisor.run() == 0
    assert len(runs.starts()) == 4


@pytest.mark.parametrize(
    ("respawn", "how", "number", "starts", "status"),
    [
        ("on-failure", "exit", 0, 1, 0),  # success is not a failure
        ("always", "exit", 0, 3, 1),  # until the start limit; a gave-up 0 becomes 1
        ("no", "exit", 1, 1, 1),
        ("no", "exit", 0, 1, 0),
        ("on-failure", "kill", 9, 3, 137),  # death by signal is a failure
        ("no", "kill", 15, 1, 143),
    ],
)
def test_respawn_policies(
    runs: Runs, respawn: str, how: str, number: int, starts: int, status: int
) -> None:
    """on-failure restarts after a non-zero exit or a signal only, always after
    any exit, no never; the status is the exit code, or 128+N for signal N."""
    supervisor = Supervisor(
        runs.command(ENDS, how, number),
        respawn=respawn,
        backoff=(0, 0),
        max_restarts=2,
        within=30,
        say=lambda text: None,
    )
    assert supervisor.run() == status
    assert len(runs.starts()) == starts


def test_a_healthy_run_resets_the_backoff(runs: Runs) -> None:
    """Runs 1-3 fail at once (delays 0.1, 0.2, 0.4); run 4 stays up 0.9 s,
    longer than within=0.6, so the delay after it is backoff[0] again (not
    0.8), and doubles from there (0.2 after run 5)."""
    said: list[str] = []
    supervisor = Supervisor(
        runs.command(FOURTH_RUN_IS_LONG, 0.9),
        respawn="on-failure",
        backoff=(0.1, 10),
        within=0.6,
        say=said.append,
    )
    assert supervisor.run() == 0
    starts = runs.starts()
    ends = [entry.at for entry in runs.entries("end")]
    assert len(starts) == len(ends) == 6
    assert_delays(gaps(starts[:4]), (0.1, 0.2, 0.4))
    assert ends[3] - starts[3] >= 0.9
    assert_delays([starts[4] - ends[3], starts[5] - ends[4]], (0.1, 0.2))
    assert [line for line in said if line.startswith("restarting")] == [
        "restarting in 0.1 s",
        "restarting in 0.2 s",
        "restarting in 0.4 s",
        "restarting in 0.1 s",
        "restarting in 0.2 s",
    ]


# --- readiness across restarts -----------------------------------------------


def test_notify_relays_ready_once_per_run_and_the_restarts(
    runs: Runs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under an outer service manager (our receiver in $NOTIFY_SOCKET), the
    program's READY=1 from its own socket is passed on once per run, with
    its STATUS=; each restart and the final give-up are announced as
    STATUS=. A run that was ready is healthy: the delay stays backoff[0]."""
    with NotifySocketReceiver() as manager:
        monkeypatch.setenv("NOTIFY_SOCKET", manager.address)
        supervisor = Supervisor(
            runs.command(READY_THEN_FAILS),
            respawn="on-failure",
            notify=True,
            backoff=(0.1, 5),
            max_restarts=2,
            within=30,
            say=lambda text: None,
        )
        assert supervisor.run() == 1
        messages = [text for _, text in manager.receive_nowait()]
    assert len(runs.starts()) == 3
    assert messages == [
        "READY=1\nSTATUS=serving\n",
        "STATUS=restarting in 0.1 s\n",
        "READY=1\nSTATUS=serving\n",
        "STATUS=restarting in 0.1 s\n",
        "READY=1\nSTATUS=serving\n",
        "STATUS=gave up after it ended 3 times\n",
    ]


def test_a_program_never_ready_is_stopped_and_restarted_as_a_failure(runs: Runs) -> None:
    """notify=True, ready_timeout=0.5, no launcher waiting: a program that
    never says READY=1 gets SIGTERM 0.5 s after its start and is restarted;
    the run counts as failed, so the delay doubles (0.2, then 0.4) even
    though within=0.2 is shorter than the run. Run 3 exits 0: the end."""
    said: list[str] = []
    supervisor = Supervisor(
        runs.command(NEVER_READY),
        respawn="on-failure",
        notify=True,
        ready_timeout=0.5,
        backoff=(0.2, 5),
        within=0.2,
        say=said.append,
    )
    assert supervisor.run() == 0
    starts = runs.starts()
    terms = [entry.at for entry in runs.entries("SIGTERM")]
    assert len(starts) == 3 and len(terms) == 2, runs.entries()
    for began, termed in zip(starts[:2], terms, strict=True):
        assert 0.3 <= termed - began <= 2.0, (starts, terms)
    assert_delays([starts[1] - terms[0], starts[2] - terms[1]], (0.2, 0.4))
    assert said.count("not ready after 0.5 s; stopping it") == 2, said
    assert [line for line in said if line.startswith("restarting")] == [
        "restarting in 0.2 s",
        "restarting in 0.4 s",
    ]


def test_a_program_never_ready_that_exits_0_on_sigterm_still_failed(runs: Runs) -> None:
    """The usual daemon exits 0 on SIGTERM. Stopped because it was not ready
    in time, its run still failed: respawn=on-failure must restart it (here
    once, max_restarts=1), and the supervisor must not report success.
    (A helper's finding: before the fix, one start and status 0.)"""
    supervisor = Supervisor(
        runs.command(ON_TERM, 0),
        respawn="on-failure",
        notify=True,
        ready_timeout=0.5,
        backoff=(0, 0),
        max_restarts=1,
        within=30,
        say=lambda text: None,
    )
    status = supervisor.run()
    assert len(runs.starts()) == 2, runs.entries()
    assert status != 0


# --- a callable target ----------------------------------------------------------


def _target(log: Path, how: str) -> Callable[[], object]:
    def target() -> object:
        with open(log, "a") as file:
            file.write(f"{os.getpid()}\n")
        if how == "raise":
            raise ValueError("boom from the target")
        if how.startswith("exit-"):
            sys.exit(None if how == "exit-none" else int(how.removeprefix("exit-")))
        return None if how == "return-none" else int(how.removeprefix("return-"))

    return target


@pytest.mark.forked
@pytest.mark.parametrize(
    ("how", "status", "starts"),
    [
        ("return-0", 0, 1),
        ("return-none", 0, 1),
        ("return-3", 3, 2),
        ("exit-4", 4, 2),
        ("exit-none", 0, 1),
        ("raise", 1, 2),
    ],
)
def test_callable_target(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], how: str, status: int, starts: int
) -> None:
    """A callable runs in a forked child (a new process per run); its int
    return or sys.exit code is the status (None is 0), an exception is 1
    with its traceback on stderr. on-failure with max_restarts=1: a failing
    function runs twice."""
    log = tmp_path / "calls"
    supervisor = Supervisor(
        _target(log, how),
        respawn="on-failure",
        backoff=(0, 0),
        max_restarts=1,
        within=30,
        say=lambda text: None,
    )
    assert supervisor.run() == status
    pids = [int(line) for line in log.read_text().split()]
    assert len(pids) == starts
    assert os.getpid() not in pids and len(set(pids)) == starts
    err = capfd.readouterr().err
    if how == "raise":
        assert err.count("Traceback (most recent call last)") == 2, err
        assert err.count("ValueError: boom from the target") == 2, err
    else:
        assert "Traceback" not in err, err


# --- bad arguments ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"respawn": "sometimes"}, "respawn"),
        ({"respawn": None}, "respawn"),
        ({"backoff": (5, 1)}, "backoff"),
        ({"backoff": (-1, 2)}, "backoff"),
        ({"backoff": (math.nan, 1)}, "backoff"),
        ({"backoff": (0.1, math.inf)}, "backoff"),
        ({"backoff": (1,)}, "backoff"),
        ({"backoff": ("0.1", 1)}, "backoff"),
        ({"max_restarts": -1}, "max_restarts"),
        ({"max_restarts": True}, "max_restarts"),
        ({"max_restarts": 2.0}, "max_restarts"),
        ({"within": 0}, "within"),
        ({"within": -1}, "within"),
        ({"within": math.nan}, "within"),
        ({"ready_timeout": 0}, "ready_timeout"),
        ({"grace": -0.5}, "grace"),
    ],
    ids=repr,
)
def test_bad_options_raise_a_configuration_error_naming_them(
    options: dict[str, Any], named: str
) -> None:
    """Each bad keyword is refused at construction, with its name in the message."""
    with pytest.raises(ConfigurationError, match=named):
        Supervisor(["true"], **options)


@pytest.mark.parametrize("command", [[], "ls", b"ls", [""], ["ls", 1]], ids=repr)
def test_a_bad_command_raises_a_configuration_error(command: Any) -> None:
    """The command is a non-empty list of strings: a bare string is refused
    (not split into letters, nor run as one word)."""
    with pytest.raises(ConfigurationError, match="command"):
        Supervisor(command)


def test_run_outside_the_main_thread_raises(runs: Runs) -> None:
    """Signal handlers can only be set in the main thread: run() elsewhere
    raises ConfigurationError at once, and starts nothing."""
    supervisor = Supervisor(runs.command(ENDS, "exit", 0))
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            supervisor.run()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=attempt)
    thread.start()
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], ConfigurationError), errors
    assert "main thread" in str(errors[0])
    assert supervisor.starts == 0 and runs.entries() == []


# --- daemonkit run: signals ---------------------------------------------------------


def test_sigterm_is_forwarded_and_a_clean_exit_ends_supervision(
    daemons: Daemons, runs: Runs, tmp_path: Path
) -> None:
    """SIGTERM to ``run --respawn`` reaches the program; it exits 0, so the
    supervisor exits 0 and does not restart it."""
    proc = Launched(daemons, tmp_path, "run", "--respawn", "--", *runs.command(ON_TERM, 0))
    [ready] = runs.wait_for("ready")
    os.kill(proc.pid, signal.SIGTERM)
    code, err = proc.finish()
    assert code == 0, err
    assert len(runs.entries("SIGTERM")) == 1
    assert len(runs.starts()) == 1, err
    assert wait_gone(ready.pid, 5)


def test_sigterm_that_kills_the_program_gives_143(
    daemons: Daemons, runs: Runs, tmp_path: Path
) -> None:
    """The program dies of the forwarded SIGTERM: the supervisor exits 143
    (128+15, not killed itself), restarts nothing and leaves nothing."""
    proc = Launched(daemons, tmp_path, "run", "--respawn", "--", *runs.command(RUNS_ON))
    [started] = runs.wait_for("start")
    os.kill(proc.pid, signal.SIGTERM)
    code, err = proc.finish()
    assert code == 143, err
    assert len(runs.starts()) == 1, err
    assert wait_gone(started.pid, 5)


def test_sigterm_during_the_backoff_pause_ends_at_once(
    daemons: Daemons, runs: Runs, tmp_path: Path
) -> None:
    """The program failed and the supervisor waits 5 s to restart it: SIGTERM
    ends the wait with 143 well before the 5 s, and no new run starts."""
    proc = Launched(
        daemons,
        tmp_path,
        "run",
        "--respawn",
        "--backoff",
        "5..5",
        "--",
        *runs.command(ENDS, "exit", 1),
    )
    [started] = runs.wait_for("start")
    # Gone from /proc: the supervisor, its only possible reaper, has collected it.
    assert wait_until(lambda: not os.path.exists(f"/proc/{started.pid}"), 10)
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    code, err = proc.finish()
    assert code == 143, err
    assert time.monotonic() - sent < 4.0
    assert len(runs.starts()) == 1, err


def test_run_init_forwards_every_signal(daemons: Daemons, runs: Runs, tmp_path: Path) -> None:
    """``run --init`` (an ordinary process, a subreaper) passes HUP, USR1,
    USR2, WINCH, INT, QUIT and TERM on to the program, which traps them all."""
    proc = Launched(daemons, tmp_path, "run", "--init", "--", *runs.command(TRAPS_ALL))
    send_each_signal(proc.pid, runs)
    code, err = proc.finish()
    assert code == 0, err


@needs_pid_namespace
def test_pid1_forwards_every_signal(daemons: Daemons, runs: Runs, tmp_path: Path) -> None:
    """As PID 1 of a PID namespace (supervising without being asked), the
    signals a process outside sends it reach the program: PID 1 only gets
    those it has handlers for, so a plain exec would have lost them."""
    runs.host_pids = False
    proc = Launched(daemons, tmp_path, "run", "--", *runs.command(TRAPS_ALL), prefix=UNSHARE)
    init = namespace_init(daemons, proc)
    send_each_signal(init, runs)
    code, err = proc.finish()
    assert code == 0, err


@pytest.mark.parametrize("group", [True, False], ids=["with-g", "without-g"])
def test_process_group_forwarding(
    daemons: Daemons, runs: Runs, tmp_path: Path, group: bool
) -> None:
    """With -g the program leads its own process group and a forwarded signal
    goes to the whole group: its child gets SIGUSR1 too. Without -g only the
    program does."""
    options = ["--init", "-g"] if group else ["--init"]
    proc = Launched(daemons, tmp_path, "run", *options, "--", *runs.command(WITH_CHILD))
    runs.wait_for("ready", count=2)
    program, child = (entry.pid for entry in runs.entries("start"))
    assert int(status_field(child, "PPid") or 0) == program
    os.kill(proc.pid, signal.SIGUSR1)
    code, err = proc.finish()
    assert code == 0, err
    got = {entry.pid for entry in runs.entries("SIGUSR1")}
    assert got == ({program, child} if group else {program})


# --- PID 1 and subreaper duty ------------------------------------------------------


@needs_pid_namespace
def test_pid1_reaps_orphaned_zombies(daemons: Daemons, runs: Runs, tmp_path: Path) -> None:
    """The program leaves 4 orphans (double fork) and runs on. They become
    children of the namespace's PID 1 (the supervisor); when they exit it
    reaps them: no process in the namespace is left a zombie. Seen from
    outside, through the host's /proc."""
    runs.host_pids = False
    command = runs.command(LEAVES_ORPHANS, 4, 1.5)
    proc = Launched(daemons, tmp_path, "run", "--", *command, prefix=UNSHARE)
    init = namespace_init(daemons, proc)
    runs.wait_for("spawned")
    orphans_inside = sorted(entry.pid for entry in runs.wait_for("orphan", count=4))
    [program_inside] = [entry.pid for entry in runs.entries("start")]
    adopted = children(init)
    [program] = [pid for pid in adopted if innermost_pid(pid) == program_inside]
    orphans = [pid for pid in adopted if pid != program]
    assert sorted(innermost_pid(pid) for pid in orphans) == orphans_inside
    assert wait_until(lambda: children(init) == [program], 10), [
        (pid, process_state(pid)) for pid in descendants(init)
    ]
    assert all(not os.path.exists(f"/proc/{pid}") for pid in orphans)
    assert [pid for pid in [init, *descendants(init)] if process_state(pid) == "Z"] == []
    os.kill(init, signal.SIGTERM)  # forwarded: the program dies of it
    code, err = proc.finish()
    assert code == 143, err


@needs_pid_namespace
@pytest.mark.parametrize(("how", "number", "status"), [("exit", 7, 7), ("kill", 9, 137)])
def test_pid1_exits_with_the_programs_status(
    daemons: Daemons, runs: Runs, tmp_path: Path, how: str, number: int, status: int
) -> None:
    """PID 1 exits with the program's status (128+N for signal N), so the
    container's exit code is the program's."""
    runs.host_pids = False
    proc = Launched(
        daemons, tmp_path, "run", "--", *runs.command(ENDS, how, number), prefix=UNSHARE
    )
    namespace_init(daemons, proc)
    code, err = proc.finish()
    assert code == status, err
    assert len(runs.starts()) == 1


def test_run_init_adopts_and_reaps_orphans(daemons: Daemons, runs: Runs, tmp_path: Path) -> None:
    """``run --init`` outside a namespace is a subreaper: the program's orphan
    is reparented to the supervisor (not to the system's init), and reaped
    by it when it exits, while the program still runs."""
    orphan_go, program_go = tmp_path / "orphan.go", tmp_path / "program.go"
    command = runs.command(ORPHAN_WAITS, orphan_go, program_go)
    proc = Launched(daemons, tmp_path, "run", "--init", "--", *command)
    [orphan_entry] = runs.wait_for("orphan")
    runs.wait_for("spawned")
    orphan = orphan_entry.pid
    daemons.track(orphan)
    assert status_field(orphan, "PPid") == str(proc.pid)
    orphan_go.touch()
    assert wait_until(lambda: not os.path.exists(f"/proc/{orphan}"), 10), process_state(orphan)
    assert proc.proc.poll() is None, "the supervisor should still be running the program"
    program_go.touch()
    code, err = proc.finish()
    assert code == 0, err


def test_kill_9_of_the_supervisor_takes_the_program_along(
    daemons: Daemons, runs: Runs, tmp_path: Path
) -> None:
    """The program gets PR_SET_PDEATHSIG=SIGKILL: a supervisor killed by
    SIGKILL (no chance to forward anything) leaves no program behind."""
    proc = Launched(daemons, tmp_path, "run", "--respawn", "--", *runs.command(RUNS_ON))
    [started] = runs.wait_for("start")
    assert status_field(started.pid, "PPid") == str(proc.pid)
    assert Path(f"/proc/{proc.pid}/comm").read_text().strip() == "dk-supervise"
    os.kill(proc.pid, signal.SIGKILL)
    code, _ = proc.finish()
    assert code == -signal.SIGKILL  # no pipe to wait on: this returns at once
    assert wait_gone(started.pid, 5), f"program {started.pid} outlived its supervisor"
    assert len(runs.starts()) == 1
