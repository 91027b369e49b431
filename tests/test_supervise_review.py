"""Review of the supervision code: each test here pins one bug a review found.

Every test drives real processes (a ``Supervisor`` in a script of its own,
or ``python -m daemonkit``). Each failed before its fix. One shows a
platform limit instead, documented in docs/supervision.md: it is marked
``xfail(strict=True)``, so it fails (XPASS) if the limit ever goes away.

Each process a test starts is tracked by pid with the ``daemons`` fixture
(programs write their pid to a file that is read back in a ``finally``);
programs under a supervisor also die with it (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest
from conftest import Daemons, Launch, clean_env, wait_gone, wait_until
from test_cli import DAEMONKIT, NOTIFY, daemon_pid, dk, processes_running

pytestmark = pytest.mark.timeout(60)


# -- helpers ----------------------------------------------------------------------------


def write_script(tmp_path: Path, name: str, body: str) -> Path:
    """A Python script in ``tmp_path`` (``body`` dedented)."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def run_script(daemons: Daemons, script: Path, *args: str, **options: object) -> Launch:
    """Run ``script`` with this interpreter to its end (tracked for cleanup)."""
    return daemons.run([sys.executable, str(script), *args], **options)  # type: ignore[arg-type]


def last_json(launch: Launch) -> dict[str, object]:
    """The JSON object a script printed on its last line of output."""
    lines = launch.stdout.strip().splitlines()
    assert lines, f"no output; exit {launch.returncode}, stderr: {launch.stderr!r}"
    data: dict[str, object] = json.loads(lines[-1])
    return data


def track_pid_file(daemons: Daemons, path: Path) -> list[int]:
    """Track every pid listed (one a line) in ``path``; the pids."""
    pids = [int(word) for word in path.read_text().split()] if path.exists() else []
    for pid in pids:
        daemons.track(pid)
    return pids


def popen(
    daemons: Daemons, argv: list[str], env: dict[str, str] | None = None, **options: object
) -> subprocess.Popen[str]:
    """Start ``argv`` without waiting (tracked for cleanup)."""
    options.setdefault("stdin", subprocess.DEVNULL)
    options.setdefault("stdout", subprocess.PIPE)
    options.setdefault("stderr", subprocess.PIPE)
    proc: subprocess.Popen[str] = subprocess.Popen(  # type: ignore[call-overload]
        argv, env=env, text=True, **options
    )
    daemons.track(proc.pid)
    return proc


def end(proc: subprocess.Popen[str], timeout: float = 15.0) -> tuple[int, str, str]:
    """SIGTERM ``proc`` (if still running), wait; its status, stdout and stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return proc.returncode, out, err


def listener(name: str) -> socket.socket:
    """A datagram socket bound to the abstract address ``@name`` (a stand-in manager)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    return sock


def messages_within(sock: socket.socket, seconds: float, wanted: str) -> list[str]:
    """Datagrams received until one holds the line ``wanted`` or ``seconds`` pass."""
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            text = sock.recv(65536).decode(errors="replace")
        except TimeoutError:
            break
        got.append(text)
        if wanted in text.splitlines():
            break
    return got


# -- 1. a busy loop -----------------------------------------------------------------------

SPIN = """\
import json, os, sys
from daemonkit import Supervisor
PIDS = sys.argv[1]
program = [sys.executable, "-c", (
    "import os, signal, sys, time\\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n"
    "open(sys.argv[1], 'a').write(f'{os.getpid()}\\\\n')\\n"
    "time.sleep(3.0)\\n"
), PIDS]
before = os.times()
code = Supervisor(program, notify=True, ready_timeout=1.0, say=lambda text: None).run()
after = os.times()
cpu = (after.user - before.user) + (after.system - before.system)
print(json.dumps({"code": code, "cpu": cpu}))
"""


def test_a_stop_before_ready_does_not_spin(daemons: Daemons, tmp_path: Path) -> None:
    """SIGTERM reaches a notify supervisor before its program is ready; the
    program ignores it and ends 3 s later by itself. Waiting for it must cost
    next to no CPU time: the supervisor has nothing to do but wait.

    Actually, from ready_timeout on, ``_watch`` keeps ``ready_until`` (now in
    the past) among its deadlines but skips the timeout action because
    ``ending`` is set, so ``select`` gets timeout 0 on every turn: a busy loop
    that burns a CPU until the program exits.
    """
    script = write_script(tmp_path, "spin.py", SPIN)
    pids = tmp_path / "pids.txt"
    proc = popen(daemons, [sys.executable, str(script), str(pids)])
    try:
        assert wait_until(pids.exists, 10), "the program never started"
        proc.send_signal(signal.SIGTERM)  # before READY=1 (it never sends one)
        code, out, err = end(proc, timeout=20)
    finally:
        track_pid_file(daemons, pids)
    assert code == 0, err
    cpu = json.loads(out.strip().splitlines()[-1])["cpu"]
    # About 2 s of waiting after ready_timeout: a sleeping supervisor uses
    # a few milliseconds; a spinning one about as much CPU as wall time.
    assert cpu < 0.25, f"the supervisor used {cpu:.2f} s of CPU while only waiting"


# -- 2. a lazy import inside a chroot -------------------------------------------------------


def sleep_jail(tmp_path: Path) -> Path:
    """A chroot holding /bin/sleep and the libraries it links to."""
    jail = tmp_path / "jail"
    binary = shutil.which("sleep")
    if binary is None or shutil.which("ldd") is None:
        pytest.skip("no sleep or ldd to build a jail with")
    files = [os.path.realpath(binary)]
    listing = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
    for line in listing.stdout.splitlines():
        for word in line.split():
            if word.startswith("/"):
                files.append(word)
    for name in files:
        inside = jail / name.lstrip("/")
        inside.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(name), inside)
    (jail / "bin").mkdir(exist_ok=True)
    if not (jail / "bin" / "sleep").exists():
        shutil.copy2(files[0], jail / "bin" / "sleep")
    check = subprocess.run(["chroot", str(jail), "/bin/sleep", "0"], capture_output=True)
    if check.returncode != 0:
        pytest.skip(f"sleep does not run in a copied jail: {check.stderr!r}")
    return jail


def test_run_in_a_chroot_relays_ready_to_its_service_manager(
    daemons: Daemons, tmp_path: Path
) -> None:
    """``daemonkit run --respawn --chroot JAIL -- /bin/sleep 30`` under a service
    manager ($NOTIFY_SOCKET, an abstract address, reachable from any root):
    the supervisor relays READY=1 once the program survived its first moments,
    and keeps supervising.

    Actually the relay does ``from .notify import ...`` after the chroot; the
    module was loaded only for ``--notify``, so the supervisor crashes with
    ModuleNotFoundError and its program is killed with it.
    """
    jail = sleep_jail(tmp_path)
    name = f"dk-review/{os.getpid()}/{os.urandom(4).hex()}"
    with listener(name) as manager:
        proc = popen(
            daemons,
            [*DAEMONKIT, "run", "--respawn", "--chroot", str(jail), "--", "/bin/sleep", "30"],
            env=clean_env(NOTIFY_SOCKET="@" + name),
            cwd=tmp_path,
        )
        try:
            got = messages_within(manager, 8.0, "READY=1")
            alive = proc.poll() is None
        finally:
            code, _, err = end(proc)
    assert any("READY=1" in text.splitlines() for text in got), (got, code, err[-600:])
    assert alive, err[-600:]


# -- 3. the notify address of a relative pidfile --------------------------------------------

# argv: PIDS. Reports RELOADING=1, then READY=1, on SIGHUP.
RELOADS = (
    NOTIFY
    + """\
import signal, sys, time
with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()}\\n")
def on_hup(signum, frame):
    notify("RELOADING=1")
    notify("READY=1")
signal.signal(signal.SIGHUP, on_hup)
notify("READY=1")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""
)


def test_reload_notify_reaches_a_supervisor_started_with_a_relative_pidfile(
    daemons: Daemons, tmp_path: Path
) -> None:
    """``start --respawn --notify --pidfile app.pid`` then ``reload --notify
    --pidfile app.pid`` from the same directory: the reload hears the
    program's RELOADING=1 and READY=1 (relayed by the supervisor) and exits 0,
    as it does with an absolute pidfile, and as the unsupervised start does
    with a relative one.

    Actually the supervisor computes ``pidfile_notify_name("app.pid")`` in the
    daemon, after the chdir to ``/``: it relays to the address of
    ``/app.pid``, and the reload waits until its timeout.
    """
    program = write_script(tmp_path, "reloads.py", RELOADS)
    pids = tmp_path / "pids.txt"
    pidfile = tmp_path / "app.pid"
    try:
        started = dk(
            daemons, "start", "--respawn", "--notify", "--pidfile", "app.pid", "--",
            sys.executable, program, pids,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        daemon_pid(daemons, pidfile)
        reloaded = dk(daemons, "reload", "--notify", "--pidfile", "app.pid", "--timeout", "3")
    finally:
        track_pid_file(daemons, pids)
        dk(daemons, "stop", "--pidfile", "app.pid")
    assert reloaded.returncode == 0, reloaded.stderr


# -- 4. socket activation handed on to the program --------------------------------------------

# argv: REPORT. Puts a listening socket on fd 3, says it is for this very
# process ($LISTEN_PID, as systemd does), and execs the supervisor.
ACTIVATED = """\
import os, socket, sys
report = sys.argv[1]
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
fd = sock.detach()
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.set_inheritable(3, True)
program = (
    "import json, os, stat, sys\\n"
    "data = {'pid': os.getpid(), 'listen_pid': os.environ.get('LISTEN_PID'),\\n"
    "        'fd3_is_socket': stat.S_ISSOCK(os.fstat(3).st_mode)}\\n"
    "open(sys.argv[1], 'w').write(json.dumps(data))\\n"
)
env = dict(os.environ, LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="web")
os.execve(sys.executable, [
    sys.executable, "-m", "daemonkit", "run", "--init", "--",
    sys.executable, "-c", program, report,
], env)
"""


def test_socket_activation_is_handed_on_to_the_program(daemons: Daemons, tmp_path: Path) -> None:
    """A socket-activated ``daemonkit run --init -- CMD`` (fd 3, LISTEN_FDS=1,
    LISTEN_PID = its pid): the program gets fd 3 and a $LISTEN_PID naming
    itself, so that sd_listen_fds() accepts the socket (as the unsupervised
    ``run`` gives it, the exec keeping the pid).

    Actually the child checks ``$LISTEN_PID == os.getpid()`` with its own
    pid, fails, and leaves LISTEN_PID naming the supervisor.
    """
    wrapper = write_script(tmp_path, "activated.py", ACTIVATED)
    report = tmp_path / "report.json"
    launch = run_script(daemons, wrapper, str(report), env=clean_env(), timeout=20)
    assert launch.returncode == 0, launch.stderr
    data = json.loads(report.read_text())
    daemons.track(data["pid"])
    assert data["fd3_is_socket"] is True
    assert data["listen_pid"] == str(data["pid"])


# -- 5, 6. what a callable target's child inherits -------------------------------------------

# argv: REPORT. The supervised function reports its comm and descriptors.
CALLABLE_CHILD = """\
import json, os, sys
from daemonkit import Supervisor
report = sys.argv[1]
def descriptors():
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[name] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the listing's own descriptor
    return found
def program():
    with open("/proc/self/comm") as comm:
        name = comm.read().strip()
    data = {"pid": os.getpid(), "comm": name, "fds": descriptors()}
    with open(report, "w") as out:
        json.dump(data, out)
    return 0
with open("/proc/self/comm") as comm:
    own_name = comm.read().strip()
before = descriptors()
code = Supervisor(program, notify=True, say=lambda text: None).run()
print(json.dumps({"code": code, "own_name": own_name, "before": before}))
"""


def callable_child(daemons: Daemons, tmp_path: Path) -> tuple[dict[str, object], dict[str, object]]:
    """Run CALLABLE_CHILD: the supervisor's report and the child's."""
    script = write_script(tmp_path, "callable_child.py", CALLABLE_CHILD)
    report = tmp_path / "child.json"
    launch = run_script(daemons, script, str(report), env=clean_env(), timeout=20)
    assert launch.returncode == 0, launch.stderr
    parent = last_json(launch)
    child = json.loads(report.read_text())
    daemons.track(child["pid"])
    assert parent["code"] == 0
    return parent, child


def test_a_callable_program_keeps_its_own_process_name(daemons: Daemons, tmp_path: Path) -> None:
    """A callable target (the ``Daemon`` app runner's @main) runs in a forked
    child; only the supervisor is named ``dk-supervise`` (the name ``status``
    takes for a supervisor): the program keeps the name the process had.

    Actually ``run()`` renames the process before forking, and the child is
    never given its name back: ``ps``/``top``/``pgrep`` show two supervisors.
    """
    parent, child = callable_child(daemons, tmp_path)
    assert child["comm"] == parent["own_name"]


def test_a_callable_program_inherits_no_supervisor_descriptors(
    daemons: Daemons, tmp_path: Path
) -> None:
    """The descriptors a callable target's child has are the ones its process
    had before ``run()`` (stdio, whatever the application opened): none of
    the supervisor's own.

    Actually the wakeup pipe (both ends) and the bound notify receiver socket
    of the supervisor are open in the program: an exec'd program is spared
    only by close-on-exec, and a function has no exec.
    """
    parent, child = callable_child(daemons, tmp_path)
    before = parent["before"]
    assert isinstance(before, dict)
    fds = child["fds"]
    assert isinstance(fds, dict)
    extra = {
        fd: target
        for fd, target in fds.items()
        if target.startswith(("pipe:", "socket:")) and before.get(fd) != target
    }
    assert extra == {}


# -- 7. bad input that ends as an unexplained exit status 1 ------------------------------------

BAD_INPUT = """\
import json, sys
from daemonkit import Supervisor
from daemonkit.errors import ConfigurationError
case = sys.argv[1]
said = []
options = {"say": said.append}
if case == "env":
    target = ["true"]
    options["env"] = {"PATH": "/usr/bin:/bin", "PORT": 8080}
else:
    target = ["echo", "a\\0b"]
try:
    code = Supervisor(target, **options).run()
except ConfigurationError as exc:
    print(json.dumps({"raised": str(exc), "said": said}))
else:
    print(json.dumps({"code": code, "said": said}))
"""


@pytest.mark.parametrize("case", ["env", "nul"])
def test_an_unusable_command_or_environment_is_reported(
    daemons: Daemons, tmp_path: Path, case: str
) -> None:
    """``Supervisor(["true"], env={"PORT": 8080})`` or a NUL byte in an
    argument cannot be exec'd: the mistake is reported (ConfigurationError
    from the constructor, or at least a line through ``say``).

    Actually the execve error is raised in the child before the exec and
    turned into exit status 1 without a word: it looks like the program ran
    and failed.
    """
    script = write_script(tmp_path, "bad_input.py", BAD_INPUT)
    launch = run_script(daemons, script, case, env=clean_env(), timeout=20)
    assert launch.returncode == 0, launch.stderr
    data = last_json(launch)
    assert "raised" in data or data["said"], data


# -- 8. the subreaper flag left behind -------------------------------------------------------

SUBREAPER_AFTER = """\
import ctypes, json, os, subprocess, sys, time
from daemonkit import Supervisor
PR_GET_CHILD_SUBREAPER = 37
libc = ctypes.CDLL(None, use_errno=True)
def subreaper():
    flag = ctypes.c_int(-1)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
    return flag.value
before = subreaper()
code = Supervisor(["true"], init=True, say=lambda text: None).run()
after = subreaper()
# Later, the application runs a command that leaves a short-lived orphan.
subprocess.run(["sh", "-c", "sleep 0.2 & echo $! > " + sys.argv[1]], check=True)
time.sleep(0.8)
zombies = []
for entry in os.listdir("/proc"):
    if entry.isdigit():
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] == "Z":
            zombies.append(int(entry))
print(json.dumps({"code": code, "before": before, "after": after, "zombies": zombies}))
"""


def test_init_supervision_leaves_no_subreaper_behind(daemons: Daemons, tmp_path: Path) -> None:
    """After ``Supervisor(..., init=True).run()`` returns, the process is as
    it was: not a subreaper, so orphans of commands it runs later go to init
    and are reaped there.

    Actually the flag stays set; an orphan of a later ``subprocess.run`` is
    re-parented to this process and stays a zombie.
    """
    script = write_script(tmp_path, "subreaper.py", SUBREAPER_AFTER)
    orphan = tmp_path / "orphan.txt"
    try:
        launch = run_script(daemons, script, str(orphan), env=clean_env(), timeout=20)
    finally:
        track_pid_file(daemons, orphan)
    assert launch.returncode == 0, launch.stderr
    data = last_json(launch)
    assert data["code"] == 0
    assert data["before"] == 0
    assert data["after"] == 0, data
    assert data["zombies"] == [], data


# -- 9. the terminal after a failed exec in a new process group -----------------------------

TERMINAL_AFTER = """\
import json, os, sys
from daemonkit import Supervisor
code = Supervisor(
    ["prog"], executable="/nonexistent/prog", process_group=True, say=lambda text: None
).run()
print(json.dumps({"code": code, "foreground": os.tcgetpgrp(0), "own": os.getpgrp()}),
      file=sys.stderr)
"""


def make_controlling_terminal() -> None:
    """In a new session's child: fd 0 (a pty) becomes its controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_a_failed_exec_gives_the_terminal_back(daemons: Daemons, tmp_path: Path) -> None:
    """A program on a terminal (a pty it controls, in the foreground) runs
    ``Supervisor(process_group=True)`` whose command cannot be exec'd: ``run()``
    returns 127 and the terminal's foreground group is the caller's again, as
    after a program that ran and exited.

    Actually the dead child's group stays in the foreground: the caller,
    now a background process of its own terminal, would be stopped by
    SIGTTIN at its next read from it.
    """
    script = write_script(tmp_path, "terminal.py", TERMINAL_AFTER)
    main, secondary = os.openpty()
    try:
        proc = popen(
            daemons,
            [sys.executable, str(script)],
            env=clean_env(),
            stdin=secondary,
            stdout=secondary,
            start_new_session=True,
            preexec_fn=make_controlling_terminal,
        )
        os.close(secondary)
        secondary = -1
        _, err = proc.communicate(timeout=20)
    finally:
        if secondary >= 0:
            os.close(secondary)
        os.close(main)
    assert proc.returncode == 0, err
    data = json.loads(err.strip().splitlines()[-1])
    assert data["code"] == 127
    assert data["foreground"] == data["own"], data


# -- 10. status with --init ------------------------------------------------------------------


def marker(tag: int) -> list[str]:
    """A ``sleep`` command line no other test uses: found in /proc by its argv."""
    return ["sleep", f"43.{os.getpid() % 1000:03d}{tag:03d}"]


def test_status_names_only_the_program_of_an_init_supervisor(
    daemons: Daemons, tmp_path: Path
) -> None:
    """``start --respawn --init`` of a shell that leaves an orphan behind and
    then execs the program: ``status`` names one program pid (the program),
    ``program_pids`` has one element.

    Actually the adopted orphan, a child of the supervisor since it is a
    subreaper, is listed as a program pid as well.
    """
    orphan, program = marker(1), marker(2)
    command = f"({' '.join(orphan)} &); exec {' '.join(program)}"
    pidfile = tmp_path / "init.pid"
    try:
        started = dk(
            daemons, "start", "--respawn", "--init", "--pidfile", pidfile, "--",
            "sh", "-c", command,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        supervisor = daemon_pid(daemons, pidfile)
        assert wait_until(lambda: processes_running(orphan) and processes_running(program), 10)
        for pid in processes_running(orphan) + processes_running(program):
            daemons.track(pid)
        (program_pid,) = processes_running(program)
        shown = dk(daemons, "status", "--pidfile", pidfile, "--json")
    finally:
        dk(daemons, "stop", "--pidfile", pidfile)
        for pid in processes_running(orphan):
            daemons.track(pid)
    data = json.loads(shown.stdout)
    assert data["supervisor"] is True and data["pid"] == supervisor
    assert data["program_pids"] == [program_pid], data


# -- 10b. kill -9 of the supervisor and a program that changes its credentials -----------------


@pytest.mark.xfail(
    strict=True,
    reason="platform limit (docs/supervision.md): 'supervisor kill -9 -> program dies' "
    "rests on PR_SET_PDEATHSIG, which the kernel clears when the program changes its "
    "uid/gid itself: such a program survives its supervisor's kill -9",
)
def test_a_program_that_drops_privileges_dies_with_its_supervisor(
    daemons: Daemons, tmp_path: Path
) -> None:
    """``start --respawn -- setpriv --reuid=65534 ... sleep`` (a program that
    drops root itself, as many daemons do), then ``kill -9`` of the
    supervisor: the program dies with it, as documented.

    Actually the kernel resets the parent-death signal when a process's
    credentials change (commit_creds), so the program is re-parented to
    init and keeps running, unsupervised and unseen by ``status``.
    """
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv")
    program = marker(3)
    pidfile = tmp_path / "drops.pid"
    try:
        started = dk(
            daemons, "start", "--respawn", "--pidfile", pidfile, "--",
            "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *program,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        supervisor = daemon_pid(daemons, pidfile)
        assert wait_until(lambda: processes_running(program), 10)
        for pid in processes_running(program):
            daemons.track(pid)
        os.kill(supervisor, signal.SIGKILL)
        assert wait_gone(supervisor, 5)
        survived = not wait_until(lambda: not processes_running(program), 5)
    finally:
        for pid in processes_running(program):
            daemons.track(pid)
    assert not survived, "the program outlived its supervisor's kill -9"


# -- 11. a listener that does not read --------------------------------------------------------

# argv: PIDS, COUNT. Says READY=1, then COUNT STATUS= lines, then waits.
CHATTY = (
    NOTIFY
    + """\
import sys, time
with open(sys.argv[1], "a") as pids:
    pids.write(f"{os.getpid()}\\n")
notify("READY=1")
for step in range(int(sys.argv[2])):
    notify(f"STATUS=step {step}")
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    time.sleep(0.05)
"""
)


def test_a_listener_that_does_not_read_cannot_freeze_the_supervisor(
    daemons: Daemons, tmp_path: Path
) -> None:
    """``start --respawn --notify --pidfile P`` relays the program's STATUS=
    lines to the address ``reload --notify --pidfile P`` listens on. Here some
    process holds that address and never reads: the supervisor must drop what
    does not fit, and still obey ``stop``.

    Actually each relay is a blocking send; once the listener's queue is full
    the supervisor sleeps in the kernel (unix_wait_for_peer) and ``stop``'s
    SIGTERM is never acted upon.
    """
    from daemonkit.notify import pidfile_notify_name

    program = write_script(tmp_path, "chatty.py", CHATTY)
    pids = tmp_path / "pids.txt"
    pidfile = tmp_path / "chatty.pid"
    squatter = listener(pidfile_notify_name(str(pidfile)))
    # More lines than the listener's queue holds (net.unix.max_dgram_qlen).
    queue = int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    count = str(2 * queue + 20)
    try:
        started = dk(
            daemons, "start", "--respawn", "--notify", "--pidfile", pidfile, "--",
            sys.executable, program, pids, count,
        )  # fmt: skip
        assert started.returncode == 0, started.stderr
        supervisor = daemon_pid(daemons, pidfile)
        time.sleep(1.0)  # the listener's queue is full by now
        stopped = dk(daemons, "stop", "--pidfile", pidfile, "--timeout", "3")
    finally:
        squatter.close()  # frees a frozen supervisor
        track_pid_file(daemons, pids)
        dk(daemons, "stop", "--pidfile", pidfile)
    assert stopped.returncode == 0, stopped.stderr
    assert wait_gone(supervisor, 5)


# -- 12. memory that grows with every notify message ---------------------------------------

# argv: N, PIDS, MARK. The program says READY=1, then sends N STATUS= lines
# twice, touching MARK.1 and MARK.2 after each batch; the script measures
# the supervisor's Python memory after each (the first batch warms it up).
GROWTH = """\
import json, os, signal, socket, sys, threading, time, tracemalloc
from daemonkit import Supervisor
count, pids, mark = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def program():
    with open(pids, "a") as out:
        out.write(f"{os.getpid()}\\n")
    address = "\\0" + os.environ["NOTIFY_SOCKET"][1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", address)
        for batch in (1, 2):
            for _ in range(count):
                sock.sendto(b"STATUS=working", address)
            open(f"{mark}.{batch}", "w").close()
            time.sleep(0.5)  # the last queued messages are read meanwhile
    time.sleep(30)
    return 0
samples = {}
def measure():
    for batch in (1, 2):
        deadline = time.monotonic() + 30
        while not os.path.exists(f"{mark}.{batch}") and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        samples[batch] = tracemalloc.get_traced_memory()[0]
    os.kill(os.getpid(), signal.SIGTERM)
tracemalloc.start()
threading.Thread(target=measure, daemon=True).start()
code = Supervisor(program, notify=True, say=lambda text: None).run()
print(json.dumps({"code": code, "growth": samples[2] - samples[1]}))
"""


def test_notify_messages_do_not_grow_the_supervisors_memory(
    daemons: Daemons, tmp_path: Path
) -> None:
    """A program that reports progress (STATUS=) again and again: the
    supervisor, which runs for months, holds no more memory after another
    10000 messages than before them.

    Actually the receiver keeps a list of all senders, one entry per
    message: 10000 messages cost about 370 kB, for ever.
    """
    script = write_script(tmp_path, "growth.py", GROWTH)
    pids, mark = tmp_path / "pids.txt", tmp_path / "mark"
    try:
        launch = run_script(
            daemons, script, "10000", str(pids), str(mark), env=clean_env(), timeout=45
        )
    finally:
        track_pid_file(daemons, pids)
    assert launch.returncode == 0, launch.stderr
    data = last_json(launch)
    assert Path(f"{mark}.2").exists()
    growth = data["growth"]
    assert isinstance(growth, int)
    assert growth < 100_000, f"{growth} bytes more after another 10000 messages"


# -- 13. the watchdog under a service manager -----------------------------------------------

# argv: PIDS. Execs ``daemonkit run --respawn`` as a service manager with a
# watchdog would start it: WATCHDOG_USEC, WATCHDOG_PID naming that process.
WATCHDOGGED = """\
import os, sys
program = (
    "import os, sys, time\\n"
    "from daemonkit import notify\\n"
    "open(sys.argv[1], 'a').write(f'{os.getpid()}\\\\n')\\n"
    "with notify.Watchdog():\\n"
    "    time.sleep(30)\\n"
)
env = dict(os.environ, WATCHDOG_USEC="1000000", WATCHDOG_PID=str(os.getpid()))
os.execve(sys.executable, [
    sys.executable, "-m", "daemonkit", "run", "--respawn", "--",
    sys.executable, "-c", program, sys.argv[1],
], env)
"""


def test_a_watchdog_is_kept_fed_under_supervision(daemons: Daemons, tmp_path: Path) -> None:
    """``daemonkit run --respawn -- CMD`` started with WATCHDOG_USEC=1 s (and
    WATCHDOG_PID naming it): WATCHDOG=1 reaches $NOTIFY_SOCKET within a few
    seconds, whether the supervisor pings for its program or passes on the
    program's own pings (systemd kills a service whose pings stop).

    Actually READY=1 arrives (relayed), but never a WATCHDOG=1.
    """
    wrapper = write_script(tmp_path, "watchdogged.py", WATCHDOGGED)
    pids = tmp_path / "pids.txt"
    name = f"dk-review/{os.getpid()}/{os.urandom(4).hex()}"
    with listener(name) as manager:
        proc = popen(
            daemons,
            [sys.executable, str(wrapper), str(pids)],
            env=clean_env(NOTIFY_SOCKET="@" + name),
        )
        try:
            got = messages_within(manager, 4.0, "WATCHDOG=1")
            if not any("READY=1" in text.splitlines() for text in got):
                got += messages_within(manager, 2.0, "READY=1")  # a ping may come first
        finally:
            code, _, err = end(proc)
            track_pid_file(daemons, pids)
    assert any("READY=1" in text.splitlines() for text in got), (got, code, err[-600:])
    assert any("WATCHDOG=1" in text.splitlines() for text in got), got
