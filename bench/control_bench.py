"""Import times of the libraries, and the speed of daemonkit's own commands.

Used by ``bench/run.py``. Every daemon started here is stopped through its
pidfile by PID (``daemonkit stop``), or killed by PID after its command line
was checked, never by name.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from detach import importable, milliseconds, woken_by_exit

IMPORTS = {
    "import daemonkit": "daemonkit",
    "from daemonkit import DaemonContext": "daemonkit",
    "import daemon": "daemon",
    "import daemonize": "daemonize",
    "import daemonocle": "daemonocle",
}

# A daemon that stamps CLOCK_MONOTONIC and leaves at once on SIGTERM: the
# stamp is as close to its exit as Python allows.
STAMPING_DAEMON = """
import os, sys, time
import daemonkit

def stamp_and_leave(signum, frame):
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, str(time.monotonic_ns()).encode())
    os.close(fd)
    os._exit(0)

context = daemonkit.DaemonContext(
    pidfile=daemonkit.PIDFile(sys.argv[1]), signal_map={"TERM": stamp_and_leave}
)
with context:
    while True:
        time.sleep(60)
"""


def _modules(stderr: str) -> list[tuple[str, int, bool]]:
    """(module, cumulative us, top level) for each line of ``-X importtime``."""
    found = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "[us]" in line:
            continue
        _, cumulative, name = (part for part in line.split("|"))
        found.append((name.strip(), int(cumulative), not name[1:].startswith(" ")))
    return found


def _import_ms(python: str, statement: str, already: set[str]) -> float:
    result = subprocess.run(
        [python, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return (
        sum(us for name, us, top in _modules(result.stderr) if top and name not in already) / 1000
    )


def import_times(python: str, iterations: int) -> dict[str, float]:
    """Median import time of each importable library, in ms."""
    bare = subprocess.run(
        [python, "-X", "importtime", "-c", "pass"], capture_output=True, text=True, check=True
    )
    already = {name for name, _, _ in _modules(bare.stderr)}
    times: dict[str, float] = {}
    for statement, module in IMPORTS.items():
        if not importable(python, module):
            continue
        _import_ms(python, statement, already)  # warm-up: .pyc files, page cache
        times[statement] = statistics.median(
            _import_ms(python, statement, already) for _ in range(iterations)
        )
    return times


@dataclass
class CommandFigures:
    """What ``measure_commands`` found."""

    stop_ms: list[float] = field(default_factory=list)
    status_ms: list[float] = field(default_factory=list)
    bare_python_ms: list[float] = field(default_factory=list)
    cycles: int = 0
    cycle_seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        def figures(values: list[float]) -> str:
            low, median, p90 = milliseconds([int(v * 1e6) for v in values])
            return f"{low:.2f} | {median:.2f} | {p90:.2f}"

        lines = ["| figure | min ms | median ms | p90 ms |", "|---|--:|--:|--:|"]
        if self.stop_ms:
            lines.append(
                f"| `daemonkit stop` returns after the daemon exited | {figures(self.stop_ms)} |"
            )
        if self.status_ms:
            lines.append(
                f"| `python -m daemonkit status` (whole process) | {figures(self.status_ms)} |"
            )
        if self.bare_python_ms:
            lines.append(
                f"| `python -c pass` (the interpreter alone) | {figures(self.bare_python_ms)} |"
            )
        if self.cycles:
            rate = self.cycles / self.cycle_seconds
            lines += [
                "",
                f"Start/stop throughput: {self.cycles} cycles of `daemonkit start --pidfile P "
                f"-- sleep 60` and `daemonkit stop --pidfile P` in {self.cycle_seconds:.1f} s: "
                f"**{rate:.1f} cycles/s** ({1000 / rate:.0f} ms per cycle, two interpreter "
                "start-ups included).",
            ]
        return lines


def _run_timed(command: list[str]) -> tuple[int, float]:
    """Run ``command``; its exit status and wall time in ms (start to the parent's wake-up)."""
    began = time.monotonic_ns()
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    exited, ended = woken_by_exit(proc.pid, time.monotonic_ns)
    if not exited:
        proc.kill()
    _, stderr = proc.communicate()
    if proc.returncode != 0 and stderr:
        sys.stderr.write(stderr.decode(errors="replace"))
    return proc.returncode, (ended - began) / 1e6


def _pid_in(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text())
    except (OSError, ValueError):
        return None


def _kill_if_ours(pid: int | None, marker: str) -> None:
    """SIGKILL ``pid`` if its command line holds ``marker`` (our daemon, not a reused pid)."""
    if pid is None:
        return
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if marker.encode() not in cmdline.read():
                return
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def measure_commands(python: str, work: Path, iterations: int, cycles: int) -> CommandFigures:
    """``stop`` latency, ``status`` time and start/stop cycles of the daemonkit command."""
    figures = CommandFigures()
    daemonkit = [python, "-m", "daemonkit"]
    script = work / "stamping_daemon.py"
    script.write_text(STAMPING_DAEMON)
    pidfile, stamp = work / "stamp.pid", work / "stamp.txt"
    try:
        for index in range(iterations + 1):  # the first is a warm-up
            status, _ = _run_timed([python, str(script), str(pidfile), str(stamp)])
            if status != 0:
                figures.problems.append(f"the stamping daemon did not start (status {status})")
                return figures
            stamp.unlink(missing_ok=True)
            status, _ = _run_timed([*daemonkit, "stop", "--pidfile", str(pidfile)])
            ended = time.monotonic_ns()
            if status != 0 or not stamp.exists():
                figures.problems.append(f"daemonkit stop failed (status {status})")
                return figures
            latency = (ended - int(stamp.read_text())) / 1e6
            if index:
                figures.stop_ms.append(latency)
        status, _ = _run_timed([python, str(script), str(pidfile), str(stamp)])
        for index in range(iterations + 1):
            code, took = _run_timed([*daemonkit, "status", "--pidfile", str(pidfile)])
            if code != 0:
                figures.problems.append(f"daemonkit status said {code}, not 0 (running)")
                return figures
            _, bare = _run_timed([python, "-c", "pass"])
            if index:
                figures.status_ms.append(took)
                figures.bare_python_ms.append(bare)
        _run_timed([*daemonkit, "stop", "--pidfile", str(pidfile)])
    finally:
        _kill_if_ours(_pid_in(pidfile), str(script))
    cycle_pidfile = work / "cycle.pid"
    began = time.monotonic()
    try:
        for _ in range(cycles):
            start = [*daemonkit, "start", "--pidfile", str(cycle_pidfile), "--", "sleep", "60"]
            code, _ = _run_timed(start)
            if code != 0:
                figures.problems.append(f"daemonkit start exited {code} in a cycle")
                return figures
            code, _ = _run_timed([*daemonkit, "stop", "--pidfile", str(cycle_pidfile)])
            if code != 0:
                figures.problems.append(f"daemonkit stop exited {code} in a cycle")
                return figures
        figures.cycles, figures.cycle_seconds = cycles, time.monotonic() - began
    finally:
        _kill_if_ours(_pid_in(cycle_pidfile), "sleep")
    return figures
