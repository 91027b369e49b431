#!/usr/bin/env bash
# How soon does `daemonkit stop` return after the daemon has exited?
#
# strace(1) timestamps (-ttt, CLOCK_REALTIME, one clock for both processes)
# the daemon's last system call, exit_group, and the stop command's own
# exit_group; the difference is the latency DESIGN.md §7 bounds (10 ms).
# Python's start-up is not part of it. Usage: bash bench/stop_latency.sh [N]
set -euo pipefail
PYTHON=${PYTHON:-python3}
n=${1:-30}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pidfile="$work/d.pid"
latencies=()
for _ in $(seq "$n"); do
    "$PYTHON" -m daemonkit start --pidfile "$pidfile" -- sleep 60
    pid=$(<"$pidfile")
    strace -ttt -qq -e trace=exit_group -o "$work/daemon.txt" -p "$pid" &
    tracer=$!
    sleep 0.2 # let strace attach
    strace -f --seccomp-bpf -ttt -qq -e trace=exit_group -o "$work/stop.txt" \
        "$PYTHON" -m daemonkit stop --pidfile "$pidfile" 2>/dev/null
    wait "$tracer" || true
    died=$(awk '/exit_group|killed by|\+\+\+ exited/ {print $1; exit}' "$work/daemon.txt")
    returned=$(awk '/exit_group/ {t=$2} END {print t}' "$work/stop.txt") # -f: "PID TIME ..."
    latencies+=("$(awk -v a="$died" -v b="$returned" 'BEGIN {printf "%.3f", (b - a) * 1000}')")
done
printf '%s\n' "${latencies[@]}" | sort -n | awk '
    { v[NR] = $1 }
    END { printf "stop returns after the daemon exits: min %.3f ms, median %.3f ms, p90 %.3f ms (n=%d)\n",
          v[1], v[int((NR + 1) / 2)], v[int(NR * 0.9 + 0.5)], NR }'
