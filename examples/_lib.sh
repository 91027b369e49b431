# shellcheck shell=bash
# Shared by the example scripts (sourced, not run): how they print steps and
# checks, and how they tell whether a process is still there.
# The sourcing script sets SCRIPT_NAME (for die) before sourcing this file.

failures=0
say() { printf '%s\n' "$*"; }
step() { printf '\n-- %s\n' "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
bad() {
    printf '   FAILED: %s\n' "$*" >&2
    failures=$((failures + 1))
}
die() {
    printf '%s: %s\n' "${SCRIPT_NAME:-example}" "$*" >&2
    exit 1
}
now_ms() { echo $(($(date +%s%N) / 1000000)); }
indent() { sed 's/^/   | /'; }

# A TCP port on 127.0.0.1 that is free now: bound to port 0 by the kernel,
# then released.
free_port() {
    "$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
