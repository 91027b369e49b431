"""How long does it take to become a daemon? daemonkit side by side with its peers.

Usage::

    python bench/detach.py            # 30 fresh processes per row
    python bench/detach.py --quick    # 5 per row, well under a minute

Prints a Markdown table and writes it to ``bench/results/detach.md``.

Each sample is a fresh launcher process (``python <launcher script>``) that
imports its library, builds its context object and then takes the start stamp.
Two intervals are measured from that stamp, with ``time.monotonic_ns()``
(``CLOCK_MONOTONIC``, one clock for every process on the machine):

detach
    start stamp -> the first line of the ``with`` body, in the daemon. The
    start stamp is taken right before ``open()`` (for the hand-written double
    fork: right before its first ``fork()``). The daemon knows the start stamp
    because it is a fork of the launcher, so nothing is written in between.
launcher exit
    start stamp -> the moment the harness (the launcher's parent) is woken by
    the launcher's exit: a pidfd of the launcher becomes readable, which is
    when a blocking ``waitpid()`` returns. So it includes the kernel's
    teardown of the launcher and the parent's wake-up, which is what a shell,
    an init script or a test that runs the launcher waits for. (Stamping just
    before ``os._exit`` in the launcher would leave the teardown out, and
    could not be done for python-daemon without patching it.) For daemonkit
    it includes the readiness handshake; the others exit right after their
    first fork and report nothing.

Not measured: interpreter start-up and the import of the library (see
``python -X importtime -c 'import daemonkit'``), the building of the context
object, and the daemon writing its record and exiting, which happen after the
stamp in the ``with`` body.

Implementations: daemonkit's ``DaemonContext``; a minimal hand-written double
fork (fork, setsid, fork, chdir, umask, closerange(3, SC_OPEN_MAX), fds 0-2 to
/dev/null), the baseline of every ratio; python-daemon's ``DaemonContext``
when it can be imported (skipped otherwise). All run with
``detach_process=True`` and otherwise default policies. Each runs at
``RLIMIT_NOFILE`` 1024 and at the hard limit, set in the launcher before it
execs (``preexec_fn``). Rows are sampled round-robin, after one discarded
warm-up round, so drift on the machine touches all rows alike. Medians are
the figures to compare; p90 is the nearest-rank 90th percentile (with 5
samples, the maximum).

Every daemon exits by itself right after its record is written. The harness
makes itself a child subreaper (Linux), so orphaned daemons become its
children and are reaped here; it waits for each daemon to be gone, checks
again at the end, and kills any survivor by its PID (never by name).

To add an implementation: write its launcher script (see ``LAUNCHERS``) and,
if it needs a third-party package, the module to probe in ``REQUIRES``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "detach.md"
BASELINE = "hand-written double fork"
LAUNCHER_TIMEOUT = 30.0  # seconds a launcher may take before the sample is an error
DAEMON_TIMEOUT = 10.0  # seconds a daemon may take to write its record and exit

# The daemon's record, written after the second stamp:
# "<pid> <start> <entered> <VmRSS kB at entry>". Written to a temporary name
# and renamed, so the harness never reads half of it.
RECORD = """
def record(path, start, entered):
    import os
    with open("/proc/self/status", "rb") as status:
        rss = next(line.split()[1] for line in status if line.startswith(b"VmRSS:"))
    data = f"{os.getpid()} {start} {entered} {int(rss)}\\n".encode()
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.close(fd)
    os.rename(path + ".tmp", path)
"""

HANDWRITTEN = (
    """
import os
import sys
import time
"""
    + RECORD
    + """
start = time.monotonic_ns()
if os.fork() > 0:
    os._exit(0)
os.setsid()
if os.fork() > 0:
    os._exit(0)
os.chdir("/")
os.umask(0o022)
os.closerange(3, os.sysconf("SC_OPEN_MAX"))
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
if null > 2:
    os.close(null)
entered = time.monotonic_ns()
record(sys.argv[1], start, entered)
"""
)


def context_launcher(module: str, arguments: str = "") -> str:
    """A launcher script entering ``<module>.DaemonContext(detach_process=True, ...)``."""
    return (
        f"""
import sys
import time

import {module}
"""
        + RECORD
        + f"""
context = {module}.DaemonContext(detach_process=True{arguments})
start = time.monotonic_ns()
with context:
    entered = time.monotonic_ns()
    record(sys.argv[1], start, entered)
"""
    )


DAEMONKIT = context_launcher("daemonkit")
DAEMONKIT_PIDFILE = context_launcher(
    "daemonkit", ', pidfile=daemonkit.PIDFile(sys.argv[1] + ".pid")'
)
PYTHON_DAEMON = context_launcher("daemon")

# daemonize: one fork and setsid; its pidfile is not optional.
DAEMONIZE = (
    """
import sys
import time

from daemonize import Daemonize
"""
    + RECORD
    + """
def action():
    entered = time.monotonic_ns()
    record(sys.argv[1], start, entered)

daemon = Daemonize(app="bench", pid=sys.argv[1] + ".pid", action=action)
start = time.monotonic_ns()
daemon.start()
"""
)

# daemonocle: double fork; its launcher waits a fixed second before it exits.
DAEMONOCLE = (
    """
import sys
import time

import daemonocle
"""
    + RECORD
    + """
def worker():
    entered = time.monotonic_ns()
    record(sys.argv[1], start, entered)

daemon = daemonocle.Daemon(worker=worker, detach=True, close_open_files=True)
start = time.monotonic_ns()
daemon.do_action("start")
"""
)

# ``setsid -f``, an external command (util-linux): the floor for a tool that
# detaches a program it execs. Its "daemon" is date(1), whose output is the
# entry stamp; intervals are measured on CLOCK_REALTIME (date has no
# monotonic clock), from the harness starting ``setsid``.
SETSID = "setsid -f"

LAUNCHERS: dict[str, str] = {
    BASELINE: HANDWRITTEN,
    SETSID: "",
    "daemonkit": DAEMONKIT,
    "daemonkit + PIDFile": DAEMONKIT_PIDFILE,
    "python-daemon": PYTHON_DAEMON,
    "daemonize": DAEMONIZE,
    "daemonocle": DAEMONOCLE,
}
REQUIRES: dict[str, str] = {
    "daemonkit": "daemonkit",
    "daemonkit + PIDFile": "daemonkit",
    "python-daemon": "daemon",
    "daemonize": "daemonize",
    "daemonocle": "daemonocle",
}
DISTRIBUTIONS: dict[str, str] = {
    "daemonkit": "daemonkit",
    "python-daemon": "python-daemon",
    "daemonize": "daemonize",
    "daemonocle": "daemonocle",
}


@dataclass
class Row:
    """The samples of one implementation at one descriptor limit."""

    name: str
    limit: int
    script: Path
    detach_ns: list[int] = field(default_factory=list)
    exit_ns: list[int] = field(default_factory=list)
    rss_kb: list[int] = field(default_factory=list)


@dataclass
class Daemon:
    pid: int
    started: str | None  # kernel start time, to tell the process from a reused pid


class SampleError(Exception):
    """A launcher or daemon did not behave: the run is reported as failed."""


# -- processes -------------------------------------------------------------------


def make_subreaper() -> bool:
    """Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER), so they can be reaped here."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time), None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def is_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_exit(pid: int, timeout: float) -> bool:
    """Wait until ``pid`` has exited (it need not be our child); True if it did."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(timeout * 1000))
    finally:
        os.close(pidfd)


def kill_by_pid(daemon: Daemon) -> bool:
    """SIGKILL ``daemon`` if it is still the same process; True if one was killed."""
    if daemon.started is None or start_time(daemon.pid) != daemon.started:
        return False
    try:
        pidfd = os.pidfd_open(daemon.pid)
    except ProcessLookupError:
        return False
    try:
        if start_time(daemon.pid) != daemon.started or not is_alive(daemon.pid):
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.poll(5000)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)
        reap(daemon.pid)


def reap(pid: int) -> int | None:
    """Collect ``pid``'s exit status if it is an exited child of ours."""
    try:
        found, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return status if found else None


def reap_orphans() -> None:
    """Reap exited children adopted as subreaper (intermediate processes, daemons).

    Called only when no launcher is running, so no launcher's status is taken.
    """
    while True:
        try:
            found, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if not found:
            return


def set_descriptor_limit(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    return preexec


def descriptor_limits() -> list[int]:
    """1024 and the hard limit (capped at fs.nr_open when it is unlimited)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY:
        try:
            hard = int(Path("/proc/sys/fs/nr_open").read_text())
        except (OSError, ValueError):
            hard = 1 << 20
    return sorted({min(1024, hard), hard})


# -- one sample --------------------------------------------------------------------


def woken_by_exit(pid: int, clock: Callable[[], int]) -> tuple[bool, int]:
    """Wait (on a pidfd) for ``pid`` to exit; whether it did in time, and when we woke."""
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        woken = bool(poller.poll(LAUNCHER_TIMEOUT * 1000))
        return woken, clock()
    finally:
        os.close(pidfd)


def sample_setsid(row: Row, workdir: Path, tag: str) -> None:
    """``setsid -f date +%s%N``: the same two intervals, on CLOCK_REALTIME."""
    record_path = workdir / f"{tag}.rec"
    with open(record_path, "wb") as out:
        start = time.time_ns()
        launcher = subprocess.Popen(
            ["setsid", "-f", "date", "+%s%N"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.DEVNULL,
            preexec_fn=set_descriptor_limit(row.limit),
        )
        woken, exited = woken_by_exit(launcher.pid, time.time_ns)
    if not woken or launcher.wait() != 0:
        launcher.kill()
        launcher.wait()
        raise SampleError(f"{row.name}: setsid did not exit 0 in time")
    deadline = time.monotonic() + DAEMON_TIMEOUT
    while not record_path.read_bytes().endswith(b"\n"):
        if time.monotonic() > deadline:
            raise SampleError(f"{row.name}: date wrote nothing within {DAEMON_TIMEOUT} s")
        time.sleep(0.0005)
    entered = int(record_path.read_text())
    reap_orphans()
    row.detach_ns.append(entered - start)
    row.exit_ns.append(exited - start)


def sample(python: str, row: Row, workdir: Path, tag: str, daemons: list[Daemon]) -> None:
    """Run one launcher; append its two intervals (and the daemon's RSS) to ``row``."""
    if row.name == SETSID:
        sample_setsid(row, workdir, tag)
        return
    record_path = workdir / f"{tag}.rec"
    stderr_path = workdir / f"{tag}.err"
    with open(stderr_path, "wb") as stderr:
        launcher = subprocess.Popen(
            [python, str(row.script), str(record_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            cwd=workdir,
            preexec_fn=set_descriptor_limit(row.limit),
        )
    woken, exited = woken_by_exit(launcher.pid, time.monotonic_ns)
    if not woken:
        launcher.kill()
        launcher.wait()
        raise SampleError(f"{row.name}: the launcher did not exit within {LAUNCHER_TIMEOUT} s")
    status = launcher.wait()
    if status != 0:
        text = stderr_path.read_text(errors="replace").strip()
        raise SampleError(f"{row.name}: the launcher exited with status {status}: {text}")
    pid, start, entered, rss = read_record(record_path, row.name)
    daemon = Daemon(pid, start_time(pid))
    daemons.append(daemon)
    if not wait_exit(pid, DAEMON_TIMEOUT):
        kill_by_pid(daemon)
        raise SampleError(f"{row.name}: daemon {pid} did not exit by itself; killed it")
    daemon_status = reap(pid)
    reap_orphans()
    if daemon_status not in (None, 0):
        raise SampleError(f"{row.name}: daemon {pid} exited with wait status {daemon_status}")
    if not start <= entered or not start <= exited:
        raise SampleError(f"{row.name}: stamps out of order: {start} {entered} {exited}")
    row.detach_ns.append(entered - start)
    row.exit_ns.append(exited - start)
    row.rss_kb.append(rss)


def read_record(path: Path, name: str) -> tuple[int, int, int, int]:
    deadline = time.monotonic() + DAEMON_TIMEOUT
    while not path.exists():
        if time.monotonic() > deadline:
            raise SampleError(f"{name}: no record from the daemon within {DAEMON_TIMEOUT} s")
        time.sleep(0.001)
    pid, start, entered, rss = (int(word) for word in path.read_text().split())
    return pid, start, entered, rss


def sweep(daemons: list[Daemon], subreaper: bool) -> list[str]:
    """Reap what is left, check every daemon is gone; kill survivors by PID."""
    problems = []
    if subreaper:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                found, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not found:
                time.sleep(0.01)
    for daemon in daemons:
        if is_alive(daemon.pid) and start_time(daemon.pid) == daemon.started:
            problems.append(f"daemon {daemon.pid} was still running; killed by PID")
            kill_by_pid(daemon)
    return problems


# -- report ------------------------------------------------------------------------


def milliseconds(values: list[int]) -> tuple[float, float, float]:
    """min, median and nearest-rank p90 of nanosecond values, in ms."""
    ordered = sorted(values)
    p90 = ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]
    return ordered[0] / 1e6, statistics.median(ordered) / 1e6, p90 / 1e6


def version_of(python: str, distribution: str) -> str:
    code = (
        "import importlib.metadata as m, sys\n"
        "try: print(m.version(sys.argv[1]))\n"
        "except m.PackageNotFoundError: print('?')\n"
    )
    result = subprocess.run(
        [python, "-c", code, distribution], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() or "?"


def importable(python: str, module: str) -> bool:
    result = subprocess.run(
        [python, "-c", f"import {module}"], capture_output=True, check=False, timeout=60
    )
    return result.returncode == 0


def python_version(python: str) -> str:
    return subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()


def versions_line(python: str, names: list[str]) -> str:
    versions = ", ".join(
        f"{name} {version_of(python, dist)}"
        for name, dist in DISTRIBUTIONS.items()
        if name in names
    )
    return versions or "(no library versions)"


def table_lines(rows: list[Row]) -> list[str]:
    """The Markdown table of rows, ratios to the hand-written row at the same limit."""
    lines = [
        "| implementation | ulimit -n | detach min | detach median | detach p90 "
        "| detach ratio | exit min | exit median | exit p90 | exit ratio | exit / hw detach "
        "| daemon RSS | RSS - hw |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    baselines = {row.limit: row for row in rows if row.name == BASELINE}
    for row in rows:
        d_min, d_med, d_p90 = milliseconds(row.detach_ns)
        e_min, e_med, e_p90 = milliseconds(row.exit_ns)
        base = baselines.get(row.limit)
        ratios = ["-", "-", "-", "-"]
        rss = f"{statistics.median(row.rss_kb) / 1024:.2f} MiB" if row.rss_kb else "-"
        if base is not None:
            base_detach = statistics.median(base.detach_ns) / 1e6
            base_exit = statistics.median(base.exit_ns) / 1e6
            ratios[:3] = [
                f"{d_med / base_detach:.2f}x",
                f"{e_med / base_exit:.2f}x",
                f"{e_med / base_detach:.2f}x",
            ]
            if row.rss_kb and base.rss_kb:
                extra = statistics.median(row.rss_kb) - statistics.median(base.rss_kb)
                ratios[3] = f"{extra / 1024:+.2f} MiB"
        cells = [
            row.name,
            str(row.limit),
            f"{d_min:.2f} ms",
            f"{d_med:.2f} ms",
            f"{d_p90:.2f} ms",
            ratios[0],
            f"{e_min:.2f} ms",
            f"{e_med:.2f} ms",
            f"{e_p90:.2f} ms",
            ratios[1],
            ratios[2],
            rss,
            ratios[3],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    limits = sorted({row.limit for row in rows})
    if len(limits) == 2:
        low, high = limits
        lines += ["", f"Flatness in `ulimit -n`: detach median at {high} / at {low}", ""]
        medians = {(row.name, row.limit): statistics.median(row.detach_ns) for row in rows}
        for name in dict.fromkeys(row.name for row in rows):
            lines.append(f"- {name}: {medians[name, high] / medians[name, low]:.2f}x")
    return lines


METHOD = [
    "- detach: stamp before `open()` (hand-written: before the first fork; daemonize, "
    "daemonocle: before their start call) to the first line of user code in the daemon; "
    "for `setsid -f`, from starting `setsid -f date` to date's own clock reading "
    "(CLOCK_REALTIME)",
    "- launcher exit: the same stamp to the launcher's parent being woken by its exit "
    "(as `waitpid()` returns); daemonkit's includes the readiness handshake, "
    "daemonocle's a fixed 1 s sleep",
    f"- ratios: medians divided by the `{BASELINE}` median at the same `ulimit -n`; "
    "*exit / hw detach* compares launcher exit with the hand-written detach (DESIGN §7)",
    "- daemon RSS: VmRSS of the daemon on its first line of user code",
]


def render(
    rows: list[Row], python: str, iterations: int, skipped: list[str], load: list[float]
) -> str:
    names = [row.name for row in rows]
    lines = [
        "# Detach benchmark",
        "",
        f"- {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, "
        f"Linux {platform.release()}, {os.cpu_count()} CPUs, "
        f"Python {python_version(python)} ({python})",
        f"- {versions_line(python, names)}",
        f"- load average (1 min) {load[0]:.2f} before, {load[1]:.2f} after: other work on "
        "the machine shows in the figures",
        f"- {iterations} fresh launcher processes per row, after one discarded warm-up, "
        "rows sampled round-robin",
        *METHOD,
    ]
    if skipped:
        lines.append(f"- skipped (not installed): {', '.join(skipped)}")
    lines += ["", *table_lines(rows)]
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "-n", "--iterations", type=int, default=30, help="samples per row (default 30)"
    )
    parser.add_argument("--quick", action="store_true", help="5 samples per row")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for the launchers (default: this)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(LAUNCHERS),
        help="measure only this implementation (repeatable; the baseline is always measured)",
    )
    parser.add_argument(
        "-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file to write"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations = 5
    if args.iterations < 1:
        parser.error("--iterations must be at least 1")
    return args


def available(python: str, names: list[str]) -> tuple[list[str], list[str]]:
    """The implementations that can run here, and those skipped (not installed)."""
    skipped = [n for n in names if n in REQUIRES and not importable(python, REQUIRES[n])]
    if SETSID in names and shutil.which("setsid") is None:
        skipped.append(SETSID)
    return [name for name in names if name not in skipped], skipped


def measure(
    python: str, names: list[str], iterations: int, progress: str = "detach"
) -> tuple[list[Row], list[str]]:
    """Sample every implementation at both descriptor limits; rows and problems."""
    subreaper = make_subreaper()
    workdir = Path(tempfile.mkdtemp(prefix="daemonkit-bench-"))
    daemons: list[Daemon] = []
    rows: list[Row] = []
    failures: list[str] = []
    began = time.monotonic()
    try:
        for name in names:
            script = workdir / f"launch_{''.join(c if c.isalnum() else '_' for c in name)}.py"
            script.write_text(LAUNCHERS[name])
            rows += [Row(name, limit, script) for limit in descriptor_limits()]
        rows.sort(key=lambda row: (row.limit, names.index(row.name)))
        print(
            f"{progress}: {len(rows)} rows x {iterations} samples (+1 warm-up), "
            f"launchers run by {python}",
            file=sys.stderr,
        )
        for round_number in range(iterations + 1):
            for index, row in enumerate(rows):
                tag = f"r{round_number}-{index}"
                try:
                    sample(python, row, workdir, tag, daemons)
                except SampleError as exc:
                    failures.append(str(exc))
                if round_number == 0:  # warm-up: forget it
                    row.detach_ns.clear()
                    row.exit_ns.clear()
                    row.rss_kb.clear()
            if failures:
                break
            print(".", end="", file=sys.stderr, flush=True)
        print(f" {time.monotonic() - began:.1f} s", file=sys.stderr)
    finally:
        failures += sweep(daemons, subreaper)
        shutil.rmtree(workdir, ignore_errors=True)
    return rows, failures


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if not hasattr(os, "pidfd_open"):
        print("detach.py needs Linux >= 5.3 and os.pidfd_open", file=sys.stderr)
        return 2
    names = [BASELINE, *(name for name in LAUNCHERS if name != BASELINE)]
    if args.only:
        names = [name for name in names if name == BASELINE or name in args.only]
    names, skipped = available(args.python, names)
    if "daemonkit" in skipped:
        print(f"detach.py: {args.python} cannot import daemonkit", file=sys.stderr)
        return 2
    load = [os.getloadavg()[0]]
    rows, failures = measure(args.python, names, args.iterations)
    if failures:
        for problem in failures:
            print(f"detach.py: FAILED: {problem}", file=sys.stderr)
        return 1
    load.append(os.getloadavg()[0])
    table = render(rows, args.python, args.iterations, skipped, load)
    print(table, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table)
    print(f"(written to {args.output})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
