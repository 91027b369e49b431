#!/usr/bin/env bash
# Run examples/container/Dockerfile's ENTRYPOINT and CMD the way a container
# engine would, without one: as PID 1 of a private PID namespace
# (`unshare --pid --fork --mount-proc`, as root), and check what PID 1 owes:
#
#   1. daemonkit is PID 1 in the namespace, the worker its child, running as
#      the unprivileged user (nobody here, `worker` in the image);
#   2. orphans the worker leaves behind are reaped: no zombie stays;
#   3. a crashing worker is restarted (a new pid answers);
#   4. SIGTERM to PID 1 (what `docker stop` sends) reaches the worker, which
#      exits 0; daemonkit exits with its status, and nothing is left.
#
# Exits 0 if all is as expected, 1 otherwise. Processes are found and
# stopped by pid, never by name.
#
# Usage: bash examples/container/run_in_namespace.sh   (as root; PYTHON
#        selects an interpreter that can import daemonkit, default python3)
set -euo pipefail

PYTHON=${PYTHON:-python3}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT_NAME=run_in_namespace.sh
# shellcheck source=examples/_lib.sh
source "$here/../_lib.sh"

(($(id -u) == 0)) || die "needs root (unshare --pid)"
unshare --pid --fork --mount-proc true 2>/dev/null || die "this kernel or sandbox refuses unshare --pid"

# The image's user `worker` is nobody here, if nobody may run this Python
# (an interpreter under /root may not be): otherwise the worker runs as root.
user=nobody uid=65534
if ! "$PYTHON" -m daemonkit run --user nobody -- "$PYTHON" -c pass 2>/dev/null; then
    say "($PYTHON cannot be run by nobody here: the worker runs as root instead)"
    user="" uid=0
fi

# The image's command line, from the Dockerfile itself, made local: the
# daemonkit command and python are $PYTHON, the worker is this directory's.
mapfile -t command < <("$PYTHON" - "$here/Dockerfile" "$PYTHON" "$here/worker.py" "$user" <<'PY'
import json, sys
dockerfile, python, worker, user = sys.argv[1:]
lines = open(dockerfile).read().splitlines()
entry = next(json.loads(l.split(None, 1)[1]) for l in lines if l.startswith("ENTRYPOINT "))
cmd = next(json.loads(l.split(None, 1)[1]) for l in lines if l.startswith("CMD "))
if not user:  # drop "--user worker"
    at = entry.index("--user")
    del entry[at : at + 2]
local = {"daemonkit": [python, "-m", "daemonkit"], "python": [python], "worker": [user],
         "/app/worker.py": [worker]}
for word in entry + cmd:
    for out in local.get(word, [word]):
        print(out)
PY
)
port=$(free_port)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
say "PID 1 will run: ${command[*]}"

HOST=127.0.0.1 PORT=$port unshare --pid --fork --mount-proc "${command[@]}" >"$log" 2>&1 &
outer=$!

# The host pid of the namespace's PID 1: unshare's only child.
init=""
for _ in $(seq 200); do
    init=$(cat /proc/$outer/task/*/children 2>/dev/null | tr -s ' ' '\n' | grep -m1 . || true)
    [[ -n $init ]] && break
    sleep 0.02
done
[[ -n $init ]] || die "unshare started no PID 1"
cleanup() {
    kill -KILL "$init" 2>/dev/null || true # the namespace dies with its PID 1
    wait "$outer" 2>/dev/null || true
    rm -f "$log"
}
trap cleanup EXIT

request() { # request TEXT: one line to the worker, its answer on stdout
    "$PYTHON" - "$port" "$1" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
            s.sendall(sys.argv[2].encode() + b"\n")
            print(s.makefile().readline().strip())
            break
    except OSError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
PY
}
# Every process of the namespace, by host pid: PID 1 and its descendants.
descendants() {
    local pid=$1 child
    echo "$pid"
    for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        descendants "$child"
    done
}
zombies() {
    local pid state
    for pid in $(descendants "$init"); do
        state=$(awk '/^State:/ {print $2}' /proc/"$pid"/status 2>/dev/null || true)
        [[ $state == Z ]] && echo "$pid"
    done
    return 0
}

step "1. daemonkit is PID 1, the worker its child, both as the image's user"
first=$(request ping)
worker=${first#pong }
nspid=$(awk '/^NSpid:/ {print $NF}' /proc/"$init"/status)
[[ $nspid == 1 ]] && ok "host pid $init is PID 1 in the namespace" || bad "NSpid of $init is $nspid"
[[ $(cat /proc/"$init"/comm) == dk-supervise ]] && ok "PID 1 is daemonkit's supervisor" ||
    bad "PID 1 is $(cat /proc/"$init"/comm)"
[[ $first == "pong "* && $worker == 2 ]] && ok "the worker answers: $first" || bad "ping: $first"
for pid in "$init" $(cat /proc/"$init"/task/*/children); do
    running_as=$(awk '/^Uid:/ {print $3}' /proc/"$pid"/status)
    [[ $running_as == "$uid" ]] && ok "pid $pid runs as uid $running_as" ||
        bad "pid $pid runs as uid $running_as, not $uid"
done

step "2. the worker's orphans are reaped"
say "$(request 'spawn 20')"
sleep 0.6 # the orphans' sleep 0.2 is over; an unreaped one would be a zombie now
left=$(zombies)
[[ -z $left ]] && ok "no zombie among $(descendants "$init" | wc -l) processes" ||
    bad "zombies: $left"

step "3. a crashing worker is restarted"
request crash >/dev/null 2>&1 || true
again=$(request ping)
[[ $again == "pong "* && $again != "$first" ]] && ok "a new worker answers: $again" ||
    bad "after the crash: $again"

step "4. SIGTERM to PID 1 stops the worker cleanly; PID 1 exits with its status"
kill -TERM "$init"
status=0
wait "$outer" || status=$?
((status == 0)) && ok "exit status 0 (the worker finished and exited 0)" || bad "exit status $status"
[[ -d /proc/$init ]] && bad "PID 1 ($init) is still there" || ok "nothing left running"
say "what PID 1 and the worker printed:"
indent <"$log"

((failures == 0)) || die "$failures check(s) failed"
say ""
say "run_in_namespace.sh: all checks passed"
