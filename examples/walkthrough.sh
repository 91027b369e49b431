#!/usr/bin/env bash
# A walk-through of the daemonkit command with examples/echo_server.py:
#
#   1. daemonkit start --notify: returns (exit 0) once the server has sent
#      READY=1 to the $NOTIFY_SOCKET daemonkit gave it, that is, once it listens;
#   2. daemonkit status (and status --json): running, with its pid and uptime;
#   3. talk to it: a line sent over TCP comes back;
#   4. daemonkit stop: exit 0 once it is gone; status then exits 3.
#
# Each command is printed before it runs, as in a tutorial, and each
# expectation is checked. Exits 0 if all hold, 1 otherwise. If the daemon is
# still running when the script ends, it is stopped by the pid from its
# pidfile (checked against the process's command line), never by name.
#
# Usage: bash examples/walkthrough.sh      (PYTHON selects the interpreter;
#        default python3, which must be able to import daemonkit)
set -euo pipefail

PYTHON=${PYTHON:-python3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
server="$here/echo_server.py" # absolute: the daemon's working directory is /

SCRIPT_NAME=walkthrough.sh
# shellcheck source=examples/_lib.sh
source "$here/_lib.sh"

# Print a command as a user would type it ("daemonkit" for "$PYTHON -m
# daemonkit", "python" for "$PYTHON", the work directory as $DIR), then run it; its exit status is
# left in $rc and its output in $out (also printed, indented).
rc=0
out=""
run() {
    local shown
    shown=$(printf '%q ' "$@")
    shown=${shown% }
    shown=${shown//"$(printf '%q' "$PYTHON") -m daemonkit"/daemonkit}
    shown=${shown//"$workdir"/\$DIR}
    shown=${shown//"$(printf '%q' "$PYTHON")"/python}
    printf '   $ %s\n' "$shown"
    rc=0
    out=$("$@" 2>&1) || rc=$?
    if [[ -n $out ]]; then
        printf '%s\n' "$out" | indent
    fi
}

# Check that the last command exited with status $1.
expect_status() {
    if [[ $rc -eq $1 ]]; then
        ok "exit status $rc"
    else
        bad "exit status $rc, expected $1"
    fi
}

# The pid in the pidfile, if it names a live echo server started by us.
our_daemon() {
    local pid
    pid=$(cat "$pidfile" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$server" || return 1
    printf '%s\n' "$pid"
}

workdir=""
pidfile=""
cleanup() {
    local status=$? pid deadline
    if [[ -n $pidfile ]] && pid=$(our_daemon); then
        say "cleanup: stopping daemon $pid (SIGTERM, then SIGKILL)" >&2
        kill -TERM "$pid" 2>/dev/null || true
        deadline=$(($(now_ms) + 5000))
        while [[ -e /proc/$pid ]] && (($(now_ms) < deadline)); do
            sleep 0.05
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    if [[ -n $workdir ]]; then
        rm -rf -- "$workdir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- setup --------------------------------------------------------------------
"$PYTHON" -m daemonkit --help >/dev/null 2>&1 ||
    die "$PYTHON cannot run 'python -m daemonkit' (is daemonkit installed? see README.rst)"
workdir=$(mktemp -d "${TMPDIR:-/tmp}/daemonkit-walkthrough.XXXXXX")
pidfile="$workdir/echo.pid"
logfile="$workdir/echo.log"
port=$(free_port)

say "daemonkit walk-through: the echo server, started and controlled by the daemonkit command"
say "   python:   $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
say "   daemonkit $("$PYTHON" -c 'import daemonkit; print(daemonkit.__version__)')"
say "   DIR:      $workdir"
say "   port:     $port"
say "   (below, 'daemonkit' is '$PYTHON -m daemonkit' and 'python' is '$PYTHON')"

# --- 1. start -----------------------------------------------------------------
step "1. start it; --notify waits for the server's READY=1 (daemonkit.ready() in echo_server.py)"
say "   (the server's path is absolute: the daemon runs in /. Its own DaemonContext sees that"
say "   daemonkit already made it the daemon: it does not detach again and keeps the lock)"
began=$(now_ms)
run "$PYTHON" -m daemonkit start --pidfile "$pidfile" --notify \
    --stdout "$logfile" --stderr "$logfile" \
    -- "$PYTHON" "$server" --port "$port" --log -
elapsed=$(($(now_ms) - began))
say "   exit status $rc after $elapsed ms"
expect_status 0
if ((rc != 0)); then
    [[ -f $logfile ]] && indent <"$logfile"
    die "the daemon did not start"
fi
daemon_pid=$(our_daemon) || die "the pidfile $pidfile does not name a running echo server"
say "   pidfile:  \$DIR/echo.pid -> pid $daemon_pid"
if grep -qF "echo_server[$daemon_pid]: listening on 127.0.0.1:$port" "$logfile"; then
    ok "the server (pid $daemon_pid, the pidfile's) listens on port $port"
else
    bad "the log does not show pid $daemon_pid listening on port $port (did it detach again?)"
    indent <"$logfile"
fi

# --- 2. status ----------------------------------------------------------------
step "2. ask whether it runs"
run "$PYTHON" -m daemonkit status --pidfile "$pidfile"
expect_status 0
if [[ $out == "running (pid $daemon_pid, up "* ]]; then
    ok "running, pid $daemon_pid, with its uptime"
else
    bad "expected 'running (pid $daemon_pid, up ...)'"
fi
run "$PYTHON" -m daemonkit status --json --pidfile "$pidfile"
expect_status 0
if "$PYTHON" - "$out" "$daemon_pid" <<'EOF'; then
import json
import sys

found = json.loads(sys.argv[1])
assert found["state"] == "running" and found["pid"] == int(sys.argv[2]), found
assert found["code"] == 0 and found["uptime"] >= 0, found
EOF
    ok "JSON: state running, pid $daemon_pid, code 0, uptime"
else
    bad "status --json did not report the running daemon"
fi

# --- 3. talk to it --------------------------------------------------------------
step "3. talk to it: send a line over TCP, read the echo"
message="hello from walkthrough.sh"
cat >"$workdir/client.py" <<'EOF'
import socket
import sys

port, line = int(sys.argv[1]), sys.argv[2]
with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
    sock.sendall(line.encode() + b"\n")
    print(sock.makefile().readline().rstrip("\n"))
EOF
say "   a small client, \$DIR/client.py:"
indent <"$workdir/client.py"
run "$PYTHON" "$workdir/client.py" "$port" "$message"
expect_status 0
if [[ $out == "$message" ]]; then
    ok "echoed: $out"
else
    bad "expected the echo '$message'"
fi

# --- 4. stop --------------------------------------------------------------------
step "4. stop it (SIGTERM; daemonkit waits until it is gone), then ask again"
run "$PYTHON" -m daemonkit stop --pidfile "$pidfile"
expect_status 0
if [[ -e /proc/$daemon_pid ]] && our_daemon >/dev/null; then
    bad "pid $daemon_pid is still running"
else
    ok "pid $daemon_pid is gone"
fi
run "$PYTHON" -m daemonkit status --pidfile "$pidfile"
expect_status 3
say "   the server's log (\$DIR/echo.log):"
indent <"$logfile"
if grep -qF "SIGTERM received" "$logfile" && grep -qF "stopped" "$logfile"; then
    ok "a clean shutdown"
else
    bad "the log does not show a clean shutdown"
fi

# --- summary --------------------------------------------------------------------
if ((failures)); then
    printf '\nFAILED: %d check(s) failed\n' "$failures"
    exit 1
fi
printf '\nOK: every check passed\n'
