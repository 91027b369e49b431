#!/usr/bin/env bash
# The main job: run examples/echo_server.py as a daemon through daemonkit and
# show, checking each point, what daemonkit promises:
#
#   1. the launcher returns only once the daemon is ready (listening);
#   2. the daemon answers; it is detached (parent is init or a subreaper, not
#      the launcher), not a session leader, and has no controlling terminal;
#   3. a second start is refused at once ("already running as pid N"), a
#      start that fails (port already taken) makes the launcher exit
#      non-zero and print the daemon's own error, and after a crash
#      (kill -9) the pidfile is stale and the next start takes it over;
#   4. SIGTERM, sent to the pid from the pidfile, stops it cleanly.
#
# Exits 0 if everything is as expected, 1 otherwise. Processes are stopped by
# the pid from the pidfile (checked against the process's command line and
# start time), never by name.
#
# Usage: bash examples/run_example.sh      (PYTHON selects the interpreter;
#        default python3, which must be able to import daemonkit)
set -euo pipefail

PYTHON=${PYTHON:-python3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
server="$here/echo_server.py"
startup_delay=0.3 # seconds the daemon pretends to need before it listens

SCRIPT_NAME=run_example.sh
# shellcheck source=examples/_lib.sh
source "$here/_lib.sh"

# Field N (1-based, as in proc(5)) of /proc/PID/stat; empty if PID is gone.
# The command name (field 2) may contain spaces and parentheses, so the
# fields are counted from after its closing parenthesis.
stat_field() {
    local stat rest
    local -a fields
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    rest=${stat##*) }
    read -r -a fields <<<"$rest"
    printf '%s\n' "${fields[$(($2 - 3))]}"
}

# True while PID exists and is not a zombie.
alive() {
    local state
    state=$(stat_field "$1" 3)
    [[ -n $state && $state != Z ]]
}

# Wait up to $2 seconds (default 10) for PID to exit; true if it did.
wait_gone() {
    local pid=$1 deadline=$(($(now_ms) + ${2:-10} * 1000))
    while alive "$pid"; do
        (($(now_ms) < deadline)) || return 1
        sleep 0.01
    done
}

# True if PID is the echo server started with our pidfile and has not been
# replaced since (start time recorded when we first saw it).
is_our_daemon() {
    local pid=$1 started=$2
    alive "$pid" || return 1
    [[ $(stat_field "$pid" 22) == "$started" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$server"
}

daemon_pid=""
daemon_started=""
workdir=""
cleanup() {
    local status=$?
    if [[ -n $daemon_pid ]] && is_our_daemon "$daemon_pid" "$daemon_started"; then
        say "cleanup: stopping daemon $daemon_pid (SIGTERM, then SIGKILL)" >&2
        kill -TERM "$daemon_pid" 2>/dev/null || true
        wait_gone "$daemon_pid" 5 || kill -KILL "$daemon_pid" 2>/dev/null || true
    fi
    if [[ -n $workdir ]]; then
        rm -rf -- "$workdir"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Send one line to the server at port $1 and print the reply: a single
# connection attempt, no retry.
query() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import socket
import sys

port, line = int(sys.argv[1]), sys.argv[2]
with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
    sock.sendall(line.encode() + b"\n")
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
print(reply.decode().rstrip("\n"))
EOF
}

# --- setup ------------------------------------------------------------------
"$PYTHON" "$server" --help >/dev/null 2>&1 ||
    die "$PYTHON cannot run $server (is daemonkit installed? see README.rst)"
workdir=$(mktemp -d "${TMPDIR:-/tmp}/daemonkit-example.XXXXXX")
pidfile="$workdir/echo.pid"
logfile="$workdir/echo.log"
port=$(free_port)

say "daemonkit example: a TCP echo daemon"
say "   python:   $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
say "   daemonkit $("$PYTHON" -c 'import daemonkit; print(daemonkit.__version__)')"
say "   work dir: $workdir"
say "   port:     $port"

# --- 1. start -----------------------------------------------------------------
step "1. start: echo_server.py --port $port --pidfile $pidfile --log $logfile --delay $startup_delay"
say "   (the daemon waits ${startup_delay} s before it binds its socket, like a slow start)"
began=$(now_ms)
"$PYTHON" "$server" --port "$port" --pidfile "$pidfile" --log "$logfile" \
    --delay "$startup_delay" </dev/null 2>"$workdir/start.err" &
launcher=$!
status=0
wait "$launcher" || status=$?
elapsed=$(($(now_ms) - began))
say "   launcher (pid $launcher) exited with status $status after $elapsed ms"
if [[ $status -ne 0 ]]; then
    indent <"$workdir/start.err"
    [[ -f $logfile ]] && indent <"$logfile"
    die "the daemon did not start"
fi
ok "launcher exited 0"
delay_ms=$(awk -v d="$startup_delay" 'BEGIN { printf "%d", d * 1000 }')
if ((elapsed >= delay_ms)); then
    ok "launcher waited for the daemon's slow start (${elapsed} ms >= ${delay_ms} ms)"
else
    bad "launcher returned after ${elapsed} ms, before the daemon could be ready (${delay_ms} ms)"
fi
[[ -s $pidfile ]] || die "no pidfile at $pidfile after a successful start"
daemon_pid=$(<"$pidfile")
[[ $daemon_pid =~ ^[0-9]+$ ]] || die "pidfile $pidfile holds '$daemon_pid', not a pid"
daemon_started=$(stat_field "$daemon_pid" 22)
[[ -n $daemon_started ]] || die "pid $daemon_pid from the pidfile is not running"
say "   pidfile:  $pidfile -> pid $daemon_pid"

# --- 2. query -----------------------------------------------------------------
step "2. query it at once: one connection attempt, no retry, no sleep"
message="hello from run_example.sh"
say "   sent:     $message"
if reply=$(query "$port" "$message"); then
    say "   echo:     $reply"
    if [[ $reply == "$message" ]]; then
        ok "the daemon was listening as soon as the launcher returned, and echoed the line"
    else
        bad "the reply differs from what was sent"
    fi
else
    bad "could not talk to the daemon right after the launcher returned"
fi

# --- 3. the daemon process ----------------------------------------------------
step "3. the daemon process (from /proc/$daemon_pid/stat)"
ppid=$(stat_field "$daemon_pid" 4)
session=$(stat_field "$daemon_pid" 6)
tty_nr=$(stat_field "$daemon_pid" 7)
parent_name=$(cat "/proc/$ppid/comm" 2>/dev/null || echo '?')
say "   pid $daemon_pid: parent $ppid ($parent_name), session $session, tty_nr $tty_nr"
# An orphan is adopted by init (PID 1) or by the nearest ancestor that is a
# child subreaper (systemd --user, tini, a CI runner): so the parent must be
# 1 or one of this script's ancestors, and never the launcher.
ancestors=" "
p=$$
while [[ -n $p && $p -gt 1 ]]; do
    ancestors+="$p "
    p=$(stat_field "$p" 4)
done
if [[ $ppid == 1 ]]; then
    ok "its parent is init (PID 1): the daemon is detached"
elif [[ $ppid != "$launcher" && $ancestors == *" $ppid "* ]]; then
    ok "its parent is PID $ppid ($parent_name), a subreaper above this script: detached"
else
    bad "its parent is PID $ppid ($parent_name), neither init nor a subreaper"
fi
if [[ $session != "$daemon_pid" ]]; then
    ok "it is not a session leader (session $session), so it can never acquire a terminal"
else
    bad "it is a session leader"
fi
if [[ $tty_nr == 0 ]]; then
    ok "tty_nr is 0: no controlling terminal"
else
    bad "it has a controlling terminal (tty_nr $tty_nr)"
fi

# --- 4. a second start, and a failing start ---------------------------------------
step "4a. a second start with the same pidfile, while the first daemon runs"
status=0
"$PYTHON" "$server" --port "$port" --pidfile "$pidfile" --log "$logfile" \
    </dev/null 2>"$workdir/again.err" || status=$?
say "   launcher exited with status $status; its stderr:"
indent <"$workdir/again.err"
if [[ $status -eq 0 ]] && grep -q "already running as pid $daemon_pid" "$workdir/again.err"; then
    ok "refused before any fork: 'already running as pid $daemon_pid' (exit 0, as LSB asks)"
else
    bad "a second start was not refused with the running daemon's pid"
fi

step "4b. a failing start: the same daemon, another pidfile, on port $port which the first one holds"
status=0
"$PYTHON" "$server" --port "$port" --pidfile "$workdir/other.pid" --log "$logfile" \
    </dev/null 2>"$workdir/fail.err" || status=$?
say "   launcher exited with status $status; its stderr:"
indent <"$workdir/fail.err"
if [[ $status -ne 0 ]]; then
    ok "the launcher exited non-zero"
else
    bad "the launcher exited 0 although the port was taken"
fi
if grep -qE 'OSError|Address already in use' "$workdir/fail.err"; then
    ok "the daemon's own error (OSError: Address already in use) was printed"
else
    bad "the daemon's error was not printed by the launcher"
fi
failed_pid=$(grep -oE '\(pid [0-9]+\)' "$workdir/fail.err" | head -n1 | tr -dc '0-9' || true)
if [[ -n $failed_pid ]]; then
    if wait_gone "$failed_pid" 5; then
        ok "the failed daemon (pid $failed_pid) is gone"
    else
        bad "the failed daemon (pid $failed_pid) is still running"
    fi
fi
if is_our_daemon "$daemon_pid" "$daemon_started" && [[ $(<"$pidfile") == "$daemon_pid" ]]; then
    ok "the first daemon still runs and its pidfile is untouched"
else
    bad "the failed start disturbed the running daemon or its pidfile"
fi

# --- 4c. a crash -------------------------------------------------------------------
step "4c. a crash: kill -9 the daemon; its pidfile stays, unlocked, and the next start takes it over"
pidfile_status() {
    "$PYTHON" -c 'import sys, daemonkit.pidfile as p; s = p.status(sys.argv[1]); print(s.state, s.pid or "")' "$1"
}
say "   status before: $(pidfile_status "$pidfile")"
kill -KILL "$daemon_pid"
wait_gone "$daemon_pid" 5 || die "pid $daemon_pid survived SIGKILL"
daemon_pid=""
after_crash=$(pidfile_status "$pidfile")
say "   status after kill -9: $after_crash"
if [[ $after_crash == stale* ]]; then
    ok "the leftover pidfile is reported stale (its lock died with the daemon)"
else
    bad "the leftover pidfile is not reported stale: $after_crash"
fi
status=0
"$PYTHON" "$server" --port "$port" --pidfile "$pidfile" --log "$logfile" \
    </dev/null 2>"$workdir/restart.err" || status=$?
if [[ $status -eq 0 ]]; then
    daemon_pid=$(<"$pidfile")
    daemon_started=$(stat_field "$daemon_pid" 22)
    ok "a new start succeeded without any cleanup: pid $daemon_pid ($(pidfile_status "$pidfile"))"
else
    indent <"$workdir/restart.err"
    die "the start after a crash failed"
fi
reply=$(query "$port" "back again") || reply=""
if [[ $reply == "back again" ]]; then
    ok "the new daemon answers"
else
    bad "the new daemon does not answer"
fi

# --- 5. stop ------------------------------------------------------------------
step "5. stop: SIGTERM to pid $daemon_pid (read from the pidfile), then wait until it is gone"
pid_now=$(<"$pidfile")
if [[ $pid_now != "$daemon_pid" ]] || ! is_our_daemon "$pid_now" "$daemon_started"; then
    die "pidfile no longer names the daemon we started; not signalling anything"
fi
began=$(now_ms)
kill -TERM "$pid_now" || die "could not signal pid $pid_now"
if wait_gone "$pid_now" 10; then
    ok "pid $pid_now exited $(($(now_ms) - began)) ms after SIGTERM"
    daemon_pid=""
else
    bad "pid $pid_now still runs 10 s after SIGTERM"
fi
if [[ ! -e $pidfile ]]; then
    ok "the daemon removed its pidfile on the way out (a clean exit): $(pidfile_status "$pidfile")"
else
    bad "the pidfile is still there"
fi
if grep -q 'SIGTERM received' "$logfile" && grep -q 'stopped' "$logfile"; then
    ok "the log shows the clean shutdown"
else
    bad "the log does not show a clean shutdown"
fi

step "the daemon's log ($logfile)"
indent <"$logfile"

echo
if ((failures)); then
    say "FAILED: $failures check(s) did not hold"
    exit 1
fi
say "OK: every check passed"
