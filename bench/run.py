"""daemonkit side by side with its peers, in one run, as ratios.

Usage (from a checkout, daemonkit installed in the interpreter used)::

    pip install -r bench/requirements-peers.txt   # optional: the peers and the plot
    python bench/run.py             # >= 30 fresh processes per figure
    python bench/run.py --quick     # a few per figure (what CI runs; no verdict)

Installs nothing; a peer that is not importable is skipped and said so.
Writes ``bench/results/results.md`` (and ``detach.png`` when matplotlib is
there) and prints the Markdown. Sections:

1. detach and launcher exit latency, daemon RSS, at ``ulimit -n`` 1024 and
   at the hard limit, for every implementation (``bench/detach.py``);
2. import time of each library (``python -X importtime``);
3. daemonkit's own commands: ``stop`` latency after the daemon exits,
   ``status`` as a whole process, and start/stop cycles per second;
4. DESIGN §7's targets, each with its measured figure and a verdict.

Timings never make it fail; a misbehaving process (a launcher or daemon that
does not exit as it should) does. Every process it starts is stopped by its
PID, never by name.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import detach
from control_bench import (
    CommandFigures,
    import_times,
    measure_commands,
)

RESULTS = detach.BENCH_DIR / "results"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--iterations", type=int, default=30, help="samples per figure")
    parser.add_argument("--cycles", type=int, default=200, help="start/stop cycles (default 200)")
    parser.add_argument("--quick", action="store_true", help="5 samples, 10 cycles")
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    parser.add_argument("-o", "--output", type=Path, default=RESULTS / "results.md")
    parser.add_argument("--no-plot", action="store_true", help="do not draw detach.png")
    args = parser.parse_args(argv)
    if args.quick:
        args.iterations, args.cycles = 5, 10
    if args.iterations < 1 or args.cycles < 1:
        parser.error("--iterations and --cycles must be at least 1")
    return args


def targets(
    rows: list[detach.Row], imports: dict[str, float], commands: CommandFigures
) -> list[str]:
    """DESIGN §7's targets with the figures of this run."""

    def median_ms(name: str, limit: int, attribute: str) -> float | None:
        for row in rows:
            if row.name == name and row.limit == limit:
                return statistics.median(getattr(row, attribute)) / 1e6
        return None

    limits = sorted({row.limit for row in rows})
    low, high = limits[0], limits[-1]
    lines = ["| target (DESIGN §7) | measured | met |", "|---|---|:-:|"]

    def add(target: str, measured: str, met: bool | None) -> None:
        lines.append(
            f"| {target} | {measured} | {'-' if met is None else 'yes' if met else 'no'} |"
        )

    for limit in limits:
        ours = median_ms("daemonkit", limit, "detach_ns")
        base = median_ms(detach.BASELINE, limit, "detach_ns")
        ours_exit = median_ms("daemonkit", limit, "exit_ns")
        if ours and base:
            add(
                f"detach within 1.2x of the hand-written double fork (ulimit -n {limit})",
                f"{ours:.2f} ms / {base:.2f} ms = {ours / base:.2f}x",
                ours / base <= 1.2,
            )
        if ours_exit and base:
            add(
                f"launcher exit within 1.5x of the hand-written detach (ulimit -n {limit})",
                f"{ours_exit:.2f} ms / {base:.2f} ms = {ours_exit / base:.2f}x",
                ours_exit / base <= 1.5,
            )
    flat_low = median_ms("daemonkit", low, "detach_ns")
    flat_high = median_ms("daemonkit", high, "detach_ns")
    if flat_low and flat_high and low != high:
        ratio = flat_high / flat_low
        add(
            f"detach flat in ulimit -n ({high} vs {low}, within 10 %)",
            f"{ratio:.2f}x",
            abs(ratio - 1) <= 0.10,
        )
    for statement in ("import daemonkit", "from daemonkit import DaemonContext"):
        if statement in imports:
            add(
                f"`{statement}` at most 3 ms",
                f"{imports[statement]:.2f} ms",
                imports[statement] <= 3.0,
            )
    rss = [row for row in rows if row.limit == low and row.name in ("daemonkit", detach.BASELINE)]
    if len(rss) == 2 and all(row.rss_kb for row in rss):
        by_name = {row.name: statistics.median(row.rss_kb) for row in rss}
        extra = (by_name["daemonkit"] - by_name[detach.BASELINE]) / 1024
        add(
            "daemon RSS at most 0.5 MiB above the hand-written double fork's",
            f"{extra:+.2f} MiB",
            extra <= 0.5,
        )
    if commands.stop_ms:
        stop = statistics.median(commands.stop_ms)
        add(
            "`stop` returns within 10 ms of the daemon's exit",
            f"median {stop:.2f} ms",
            stop <= 10.0,
        )
    return lines


def plot(rows: list[detach.Row], path: Path) -> str | None:
    """A box plot of detach latency by implementation; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    limits = sorted({row.limit for row in rows})
    figure, axes = plt.subplots(1, len(limits), figsize=(6 * len(limits), 4.5), sharey=True)
    if len(limits) == 1:
        axes = [axes]
    for axis, limit in zip(axes, limits, strict=True):
        chosen = [row for row in rows if row.limit == limit and "daemonocle" not in row.name]
        axis.boxplot(
            [[value / 1e6 for value in row.detach_ns] for row in chosen],
            showfliers=False,
        )
        axis.set_xticks(
            range(1, len(chosen) + 1),
            [row.name for row in chosen],
            rotation=30,
            ha="right",
            fontsize=8,
        )
        axis.set_yscale("log")  # daemonize at a high ulimit -n is 20x the rest
        axis.set_title(f"detach latency, ulimit -n {limit}")
        axis.set_ylabel("ms (open() to the first line in the daemon)")
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return str(path)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    if not hasattr(os, "pidfd_open"):
        print("run.py needs Linux >= 5.3 and os.pidfd_open", file=sys.stderr)
        return 2
    env_note = os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # launchers use .pyc files
    names, skipped = detach.available(args.python, list(detach.LAUNCHERS))
    if "daemonkit" not in names:
        print(f"run.py: {args.python} cannot import daemonkit", file=sys.stderr)
        return 2
    load = [os.getloadavg()[0]]
    began = time.monotonic()
    rows, failures = detach.measure(args.python, names, args.iterations)
    imports = import_times(args.python, args.iterations)
    with tempfile.TemporaryDirectory(prefix="daemonkit-bench-") as work:
        commands = measure_commands(args.python, Path(work), args.iterations, args.cycles)
    failures += commands.problems
    load.append(os.getloadavg()[0])
    if failures:
        for problem in failures:
            print(f"run.py: FAILED: {problem}", file=sys.stderr)
        return 1
    picture = None if args.no_plot else plot(rows, args.output.with_name("detach.png"))
    lines = [
        "# daemonkit benchmarks",
        "",
        f"- {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, Linux "
        f"{platform.release()}, {os.cpu_count()} CPUs, Python "
        f"{detach.python_version(args.python)}; {detach.versions_line(args.python, names)}",
        f"- load average (1 min) {load[0]:.2f} before, {load[1]:.2f} after; "
        f"{time.monotonic() - began:.0f} s in all",
        f"- {args.iterations} fresh processes per figure, after a discarded warm-up",
    ]
    if skipped:
        lines.append(
            f"- skipped (not installed; `pip install -r bench/requirements-peers.txt`): "
            f"{', '.join(skipped)}"
        )
    if env_note is not None:
        lines.append("- PYTHONDONTWRITEBYTECODE was unset for the measured processes")
    lines += ["", "## Targets", "", *targets(rows, imports, commands)]
    lines += ["", "## Detach, launcher exit, daemon RSS", "", *detach.METHOD, ""]
    lines += detach.table_lines(rows)
    if picture:
        lines += ["", f"![detach latency]({Path(picture).name})"]
    lines += ["", "## Import time", "", *imports_table(imports)]
    lines += ["", "## daemonkit's commands", "", *commands.lines()]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"(written to {args.output}{' and ' + picture if picture else ''})", file=sys.stderr)
    return 0


def imports_table(imports: dict[str, float]) -> list[str]:
    lines = [
        "Median of `python -X importtime -c 'import X'` (cumulative, the modules the bare "
        "interpreter had not imported yet):",
        "",
        "| import | time |",
        "|---|--:|",
    ]
    lines += [f"| `{statement}` | {ms:.2f} ms |" for statement, ms in imports.items()]
    return lines


if __name__ == "__main__":
    sys.exit(main())
