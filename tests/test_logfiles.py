"""Log files follow rotation: ``mv app.log app.log.1; kill -HUP PID`` and the
daemon writes to a new ``app.log``, losing and repeating nothing.

What is tested, on real daemons:

- ``stdout``/``stderr`` given as paths (or as file objects opened for append)
  and the files of ``logging.FileHandler``\\ s configured before ``open()`` are
  reopened on the reopen signal (SIGHUP by default, ``reopen_signal="USR2"``,
  none with ``reopen_signal=None``), while a write loop runs flat out: the
  rotated files, read in order, hold every number exactly once;
- logging handlers' descriptors survive the detach without ``files_preserve``;
  ``WatchedFileHandler`` follows the rename by itself;
- the map's own SIGHUP handler runs after the reopening; an unmapped or
  ``SIG_DFL`` SIGHUP kills the daemon and reopens nothing;
- ``reopen_log_files()`` on demand, and its problems: after a privilege drop
  a file whose directory the daemon cannot write keeps the old file, with a
  warning in it;
- the systemd journal stream (``$JOURNAL_STREAM``) is kept instead of
  ``/dev/null`` only when it names the descriptor;
- created and reopened files have mode ``0o664 & ~umask`` (the daemon's).

The daemon's descriptors are checked from outside through ``/proc``. Daemon
loops wait with ``stop_requested.wait()`` or in 0.05 s sleeps, so a signal is
handled at once.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from conftest import Daemons, Supervised, daemon_facts, is_alive, stop, wait_gone
from test_streams import open_flags
from test_validation import PREIMPORTS, nobody

ROTATIONS = 3
LINES_PER_FILE = 20  # what a file must hold before the next rotation

# -- helpers ----------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def numbers(path: Path) -> list[int]:
    """The numbers written to ``path``, one per line (the last may lack its newline)."""
    return [int(word) for word in read(path).split()]


def wait_for_numbers(path: Path, count: int = LINES_PER_FILE) -> None:
    wait_until(lambda: len(read(path).split()) >= count, f"{count} lines in {path}")


def wait_for_text(path: Path, text: str) -> None:
    wait_until(lambda: text in read(path), f"{text!r} in {path}")


def rotated(log: Path, generation: int) -> Path:
    """Where rotation number ``generation`` moved ``log`` (``app.log.1`` ...)."""
    return log.with_name(f"{log.name}.{generation}")


def rotate(pid: int, logs: Sequence[Path], generation: int, sig: int = signal.SIGHUP) -> None:
    """What logrotate does: rename each log, signal the daemon, see new files fill."""
    for log in logs:
        log.rename(rotated(log, generation))
    os.kill(pid, sig)
    for log in logs:
        wait_for_numbers(log)


def in_rotation_order(log: Path, rotations: int) -> list[Path]:
    return [*(rotated(log, n) for n in range(1, rotations + 1)), log]


def same_file(pid: int, fd: int, path: Path) -> bool:
    """True if descriptor ``fd`` of ``pid`` is the file now at ``path``."""
    there, here = os.stat(f"/proc/{pid}/fd/{fd}"), path.stat()
    return (there.st_dev, there.st_ino) == (here.st_dev, here.st_ino)


def check_descriptor(pid: int, fd: int, log: Path) -> None:
    """``fd`` is ``log`` (the current file), for appending; inheritable if 0-2."""
    assert os.readlink(f"/proc/{pid}/fd/{fd}") == str(log)
    assert same_file(pid, fd, log)
    flags = open_flags(pid, fd)
    assert flags & os.O_ACCMODE == os.O_WRONLY
    assert flags & os.O_APPEND
    assert bool(flags & os.O_CLOEXEC) == (fd > 2)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- rotation under a write loop ---------------------------------------------

# The daemon writes 0, 1, 2, ... as fast as a 1 ms wait allows, until SIGTERM
# (the default map's "terminate": SystemExit(0)). LOG_FDS: the descriptors
# that must be the log file.
WRITE_LOOP = """
import logging
LOG = sys.argv[2]
{setup}
context = daemonkit.DaemonContext({kwargs})
with context:
    facts.report(REPORT, log_fds={log_fds})
    number = 0
    while True:
        {emit}
        number += 1
        context.stop_requested.wait(0.001)
"""

HANDLER_SETUP = """
handler = logging.FileHandler(LOG)
handler.setFormatter(logging.Formatter("%(message)s"))
logger = logging.getLogger("app")
logger.setLevel(logging.INFO)
logger.propagate = False
logger.addHandler(handler)
"""

WRITERS: dict[str, dict[str, str]] = {
    "stdout": {
        "setup": "",
        "kwargs": "stdout=LOG",
        "log_fds": "[1]",
        "emit": "print(number, flush=True)",
    },
    "stderr": {
        "setup": "",
        "kwargs": "stderr=LOG",
        "log_fds": "[2]",
        "emit": "print(number, file=sys.stderr, flush=True)",
    },
    "stdout-and-stderr": {
        "setup": "",
        "kwargs": "stdout=LOG, stderr=LOG",
        "log_fds": "[1, 2]",
        "emit": "print(number, file=(sys.stdout, sys.stderr)[number % 2], flush=True)",
    },
    "file-handler": {
        "setup": HANDLER_SETUP,
        "kwargs": "",
        "log_fds": "[handler.stream.fileno()]",
        "emit": 'logger.info("%d", number)',
    },
}


def write_loop(writer: str, **overrides: str) -> str:
    return WRITE_LOOP.format(**{**WRITERS[writer], **overrides})


def check_sequence(files: Sequence[Path]) -> list[int]:
    """The files, read in order, hold 0..N-1 exactly once each; each is non-empty."""
    per_file = {path.name: numbers(path) for path in files}
    for name, found in per_file.items():
        assert found, f"{name} is empty"
    together = [number for found in per_file.values() for number in found]
    assert together == list(range(len(together))), [
        (name, found[0], found[-1], len(found)) for name, found in per_file.items()
    ]
    return together


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_rotation_under_a_write_loop(daemons: Daemons, tmp_path: Path, writer: str) -> None:
    log = tmp_path / "logs" / "app.log"
    log.parent.mkdir()
    launch, report = daemons.launch(write_loop(writer), args=[str(log)])
    data = daemon_facts(daemons, launch, report)
    pid = data["pid"]
    assert launch.returncode == 0, launch.stderr
    log_fds: list[int] = data["log_fds"]
    wait_for_numbers(log)

    for generation in range(1, ROTATIONS + 1):
        rotate(pid, [log], generation)
        assert is_alive(pid)
        for fd in log_fds:
            check_descriptor(pid, fd, log)
    # A stream that is not the log stays /dev/null (never the harness's pipes).
    for fd in {1, 2} - set(log_fds):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    assert stop(pid)

    written = check_sequence(in_rotation_order(log, ROTATIONS))
    assert len(written) >= (ROTATIONS + 1) * LINES_PER_FILE


# -- logging handlers --------------------------------------------------------

# A FileHandler on the root logger (basicConfig) and a WatchedFileHandler on
# "app", which propagates: each record goes to both files. No files_preserve.
LOGGING_LOOP = """
import logging, logging.handlers
PLAIN, WATCHED = sys.argv[2], sys.argv[3]
logging.basicConfig(filename=PLAIN, format="%(message)s", level=logging.INFO)
plain = logging.getLogger().handlers[0]
watched = logging.handlers.WatchedFileHandler(WATCHED)
watched.setFormatter(logging.Formatter("%(message)s"))
logger = logging.getLogger("app")
logger.addHandler(watched)
context = daemonkit.DaemonContext()
with context:
    facts.report(
        REPORT,
        plain_fd=plain.stream.fileno(),
        watched_fd=watched.stream.fileno(),
        kinds=[type(plain).__name__, type(watched).__name__],
    )
    number = 0
    while True:
        logger.info("%d", number)
        number += 1
        context.stop_requested.wait(0.001)
"""


def test_logging_handlers_survive_the_detach_and_rotate(daemons: Daemons, tmp_path: Path) -> None:
    plain, watched = tmp_path / "plain.log", tmp_path / "watched.log"
    launch, report = daemons.launch(LOGGING_LOOP, args=[str(plain), str(watched)])
    data = daemon_facts(daemons, launch, report)
    pid = data["pid"]
    assert launch.returncode == 0, launch.stderr
    assert data["kinds"] == ["FileHandler", "WatchedFileHandler"]
    # Kept open across the detach, though files_preserve did not name them.
    assert data["fds"][str(data["plain_fd"])] == str(plain)
    assert data["fds"][str(data["watched_fd"])] == str(watched)
    wait_for_numbers(plain)
    wait_for_numbers(watched)

    rotations = 2
    for generation in range(1, rotations + 1):
        rotate(pid, [plain, watched], generation)
        # The FileHandler's descriptor was pointed at the new file, in place.
        check_descriptor(pid, data["plain_fd"], plain)
    assert stop(pid)

    from_plain = check_sequence(in_rotation_order(plain, rotations))
    from_watched = check_sequence(in_rotation_order(watched, rotations))
    # The same records in both (the last may have reached only the first handler).
    assert abs(len(from_plain) - len(from_watched)) <= 1


# -- which signal reopens ----------------------------------------------------


def test_reopen_signal_usr2(daemons: Daemons, tmp_path: Path) -> None:
    """SIGUSR2 reopens; SIGHUP is then not the daemon's business: it keeps the
    disposition the launcher had (here the default), so it kills the daemon."""
    log = tmp_path / "app.log"
    body = "signal.signal(signal.SIGHUP, signal.SIG_DFL)\nfacts.report(REPORT + '.launcher')\n"
    body += write_loop("stdout", kwargs='stdout=LOG, reopen_signal="USR2"')
    body = body.replace("LOG = sys.argv[2]", f"LOG = {str(log)!r}")
    run = Supervised(daemons, tmp_path, body)
    data = run.read_report()
    pid = data["pid"]
    assert data["signals"]["SIGUSR2"] == "reopen"
    assert data["signals"]["SIGHUP"] == "default"
    wait_for_numbers(log)

    for generation in (1, 2):
        rotate(pid, [log], generation, signal.SIGUSR2)
        check_descriptor(pid, 1, log)
    os.kill(pid, signal.SIGHUP)
    assert wait_gone(pid)

    assert run.statuses(pid) == {"launcher": 0, str(pid): -signal.SIGHUP}
    check_sequence(in_rotation_order(log, 2))


# The map's HUP handler prints where stdout is at that moment; USR1 reopens on
# demand and prints the problems reopen_log_files() returned.
HANDLERS_BODY = """
import json
LOG = sys.argv[2]

def on_hup(*signal_args):
    print("hup", os.readlink("/proc/self/fd/1"), flush=True)

def on_usr1(*signal_args):
    print("problems", json.dumps(context.reopen_log_files()), flush=True)

context = daemonkit.DaemonContext(stdout=LOG, {kwargs})
{register}
with context:
    facts.report(REPORT)
    print("before", flush=True)
    linger()
"""


@pytest.mark.parametrize("how", ["signal_map", "on_signal"])
def test_map_handler_runs_after_the_reopening(daemons: Daemons, tmp_path: Path, how: str) -> None:
    log = tmp_path / "app.log"
    if how == "signal_map":
        kwargs = 'signal_map={"TERM": "terminate", "HUP": on_hup}'
        register = ""
    else:
        kwargs = ""
        register = 'context.on_signal("HUP")(on_hup)'
    body = HANDLERS_BODY.format(kwargs=kwargs, register=register)
    launch, report = daemons.launch(body, args=[str(log)])
    data = daemon_facts(daemons, launch, report)
    pid = data["pid"]
    assert launch.returncode == 0, launch.stderr
    assert data["signals"]["SIGHUP"] == "reopen+on_hup"
    wait_for_text(log, "before\n")

    for generation in (1, 2):
        log.rename(rotated(log, generation))
        os.kill(pid, signal.SIGHUP)
        # The handler already saw (and wrote to) the new file.
        wait_for_text(log, "hup")
        assert is_alive(pid)
    assert stop(pid)

    assert read(rotated(log, 1)) == "before\n"
    assert read(rotated(log, 2)) == f"hup {log}\n"
    assert read(log) == f"hup {log}\n"


def test_reopen_signal_none(daemons: Daemons, tmp_path: Path) -> None:
    """Without a reopen signal SIGHUP runs only the map's handler: output keeps
    going to the renamed file. reopen_log_files() still reopens, on demand."""
    log = tmp_path / "app.log"
    kwargs = 'reopen_signal=None, signal_map={"TERM": "terminate", "HUP": on_hup, "USR1": on_usr1}'
    launch, report = daemons.launch(
        HANDLERS_BODY.format(kwargs=kwargs, register=""), args=[str(log)]
    )
    data = daemon_facts(daemons, launch, report)
    pid = data["pid"]
    assert launch.returncode == 0, launch.stderr
    assert data["signals"]["SIGHUP"] == "on_hup"
    wait_for_text(log, "before\n")

    old = rotated(log, 1)
    log.rename(old)
    os.kill(pid, signal.SIGHUP)
    wait_for_text(old, "hup")
    assert not log.exists()
    assert os.readlink(f"/proc/{pid}/fd/1") == str(old)

    os.kill(pid, signal.SIGUSR1)
    wait_for_text(log, "problems")
    os.kill(pid, signal.SIGHUP)
    wait_for_text(log, "hup")
    assert stop(pid)

    assert read(old) == f"before\nhup {old}\n"
    assert read(log) == f"problems []\nhup {log}\n"


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param("reopen_signal=None", id="reopen_signal=None"),
        pytest.param('signal_map={"TERM": "terminate", "HUP": signal.SIG_DFL}', id="HUP=SIG_DFL"),
    ],
)
def test_default_sighup_kills_without_reopening(
    daemons: Daemons, tmp_path: Path, kwargs: str
) -> None:
    """No reopen signal, or an explicit SIG_DFL for SIGHUP: SIGHUP does what it
    does by default (terminate the process), and no file is reopened first."""
    log = tmp_path / "app.log"
    body = f"""
LOG = {str(log)!r}
signal.signal(signal.SIGHUP, signal.SIG_DFL)
facts.report(REPORT + ".launcher")
with daemonkit.DaemonContext(stdout=LOG, {kwargs}):
    facts.report(REPORT)
    print("before", flush=True)
    linger()
"""
    run = Supervised(daemons, tmp_path, body)
    data = run.read_report()
    pid = data["pid"]
    assert data["signals"]["SIGHUP"] == "default"
    wait_for_text(log, "before\n")

    log.rename(rotated(log, 1))
    os.kill(pid, signal.SIGHUP)
    assert wait_gone(pid)

    assert run.statuses(pid) == {"launcher": 0, str(pid): -signal.SIGHUP}
    assert not log.exists()
    assert read(rotated(log, 1)) == "before\n"


# -- stdout as a file object -------------------------------------------------


@pytest.mark.parametrize(("file_mode", "reopened"), [("a", True), ("a+", True), ("w", False)])
def test_file_object_stdout(
    daemons: Daemons, tmp_path: Path, file_mode: str, reopened: bool
) -> None:
    """python-daemon's ``stdout=open(path, "a")`` is reopened by its name; a file
    opened for writing (not appending) is left alone."""
    log = tmp_path / "app.log"
    body = write_loop("stdout", kwargs=f"stdout=open(LOG, {file_mode!r})")
    launch, report = daemons.launch(body, args=[str(log)])
    data = daemon_facts(daemons, launch, report)
    pid = data["pid"]
    assert launch.returncode == 0, launch.stderr
    assert data["fds"]["1"] == str(log)
    wait_for_numbers(log)

    old = rotated(log, 1)
    if reopened:
        rotate(pid, [log], 1)
        check_descriptor(pid, 1, log)
        assert stop(pid)
        check_sequence([old, log])
    else:
        log.rename(old)
        os.kill(pid, signal.SIGHUP)
        before = len(numbers(old))
        wait_for_numbers(old, before + LINES_PER_FILE)
        assert is_alive(pid)
        assert os.readlink(f"/proc/{pid}/fd/1") == str(old)
        assert stop(pid)
        assert not log.exists()
        check_sequence([old])


# -- reopening after a privilege drop ------------------------------------------

PRIVILEGE_BODY = (
    PREIMPORTS
    + """
import json, logging, threading
LOG, OUT, UID = sys.argv[2], sys.argv[3], int(sys.argv[4])
context = daemonkit.DaemonContext(uid=UID, stdout=LOG, stderr=LOG)

@context.on_signal("USR1")
def on_usr1(*signal_args):
    print("problems", json.dumps(context.reopen_log_files()), flush=True)

with context:
    print("before", flush=True)
    facts.report(OUT)
    linger()
"""
)


@pytest.mark.skipif(os.geteuid() != 0, reason="a privilege drop needs root")
@pytest.mark.parametrize("directory_owner", ["root", "daemon-user"])
def test_reopen_after_privilege_drop(
    daemons: Daemons, open_dir: Path, directory_owner: str
) -> None:
    """The daemon reopens as its own user: where that user cannot create the
    file, output stays in the old file, which says why; elsewhere the new file
    is the daemon user's."""
    user: pwd.struct_passwd = nobody()
    logs = open_dir / "logs"
    logs.mkdir(mode=0o755)
    if directory_owner == "daemon-user":
        os.chown(logs, user.pw_uid, user.pw_gid)
    log = logs / "app.log"
    log.touch(mode=0o644)
    os.chown(log, user.pw_uid, user.pw_gid)
    out = open_dir / "report.json"
    launch, _ = daemons.launch(
        PRIVILEGE_BODY, args=[str(log), str(out), str(user.pw_uid)], timeout=20
    )
    assert launch.returncode == 0, launch.stderr
    data = daemons.read_report(out)
    pid = data["pid"]
    assert data["resuid"] == [user.pw_uid] * 3
    wait_for_text(log, "before\n")

    old = rotated(log, 1)
    log.rename(old)
    os.kill(pid, signal.SIGHUP)
    warning = f"daemonkit: cannot reopen log file {str(log)!r}: Permission denied"
    if directory_owner == "root":
        wait_for_text(old, warning)
        assert is_alive(pid)
        assert not log.exists()
        # On demand too: the problem is returned, and output still goes to the old file.
        os.kill(pid, signal.SIGUSR1)
        wait_for_text(old, "problems")
        assert is_alive(pid)
        assert os.readlink(f"/proc/{pid}/fd/1") == str(old)
        assert stop(pid)
        assert not log.exists()
        lines = read(old).splitlines()
        assert lines == [
            "before",
            f"{warning}; still writing to the old file",
            f"{warning}; still writing to the old file",
            "problems " + json.dumps([warning]),
        ]
    else:
        wait_until(log.exists, f"{log} to be created")
        os.kill(pid, signal.SIGUSR1)
        wait_for_text(log, "problems")
        assert stop(pid)
        assert read(old) == "before\n"
        assert read(log) == "problems []\n"
        created = log.stat()
        assert (created.st_uid, created.st_gid) == (user.pw_uid, user.pw_gid)
        assert mode(log) == 0o644


# -- systemd's journal stream --------------------------------------------------

JOURNAL_BODY = """
fd, matching = int(sys.argv[2]), sys.argv[3] == "matching"
# The launcher's fd is "the journal"; JOURNAL_STREAM names it, or another file.
os.dup2(os.open("journal.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), fd)
open("other.txt", "w").close()
named = os.fstat(fd) if matching else os.stat("other.txt")
os.environ["JOURNAL_STREAM"] = f"{named.st_dev}:{named.st_ino}"
with daemonkit.DaemonContext():
    os.write(fd, b"from the daemon\\n")
    facts.report(REPORT)
    linger()
"""


@pytest.mark.parametrize("fd", [1, 2])
@pytest.mark.parametrize("matching", ["matching", "other-file"])
def test_journal_stream(daemons: Daemons, tmp_path: Path, fd: int, matching: str) -> None:
    launch, report = daemons.launch(JOURNAL_BODY, args=[str(fd), matching], timeout=10)
    data = daemon_facts(daemons, launch, report)
    pid = data["pid"]
    assert launch.returncode == 0, launch.stderr
    journal = tmp_path / "journal.txt"
    if matching == "matching":
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == str(journal)
        assert same_file(pid, fd, journal)
        wait_for_text(journal, "from the daemon\n")
    else:
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    # The other stream, the harness's pipe, is not the journal: /dev/null.
    assert os.readlink(f"/proc/{pid}/fd/{3 - fd}") == "/dev/null"
    assert stop(pid)
    assert read(journal) == ("from the daemon\n" if matching == "matching" else "")


# -- modes of created files ----------------------------------------------------

# The launcher's own umask (0o077) must not matter: stream files are created
# with the daemon's, and so is every reopened file. The FileHandler's file is
# created by the launcher's Python (0o600) and then by the daemon at reopening.
MODES_BODY = """
import logging
LOG, HANDLED = sys.argv[2], sys.argv[3]
os.umask(0o077)
handler = logging.FileHandler(HANDLED)
logging.getLogger("app").addHandler(handler)
with daemonkit.DaemonContext(stdout=LOG, {kwargs}):
    print("start", flush=True)
    logging.getLogger("app").warning("start")
    facts.report(REPORT)
    linger()
"""


@pytest.mark.parametrize(
    ("umask", "expected"),
    [
        pytest.param(None, 0o644, id="default-umask"),
        pytest.param(0o027, 0o640, id="umask-027"),
        pytest.param(0o002, 0o664, id="umask-002"),
    ],
)
def test_created_and_reopened_file_modes(
    daemons: Daemons, tmp_path: Path, umask: int | None, expected: int
) -> None:
    log, handled = tmp_path / "app.log", tmp_path / "handled.log"
    kwargs = "" if umask is None else f"umask={umask}"
    launch, report = daemons.launch(MODES_BODY.format(kwargs=kwargs), args=[str(log), str(handled)])
    data = daemon_facts(daemons, launch, report)
    pid = data["pid"]
    assert launch.returncode == 0, launch.stderr
    assert data["umask"] == (0o022 if umask is None else umask)
    wait_for_text(log, "start\n")
    wait_for_text(handled, "start\n")
    assert mode(log) == expected
    assert mode(handled) == 0o600

    for path in (log, handled):
        path.rename(rotated(path, 1))
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: log.exists() and handled.exists(), "the daemon to create new files")
    assert mode(log) == expected
    assert mode(handled) == expected
    check_descriptor(pid, 1, log)
    assert stop(pid)
    assert read(log) == read(handled) == ""


# -- descriptors the program changed after open() --------------------------------

# The program itself renames its logs and sends itself SIGHUP, then reports
# where its descriptors point (no detach: the reopening is the same code).
CHANGED_AFTER_OPEN = """
import logging, socket

handler = logging.FileHandler("handler.log", delay=sys.argv[2] == "delay")
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)
stdout = open("out.log", "a")  # a relative name: python-daemon's idiom
context = daemonkit.DaemonContext(
    detach_process=False, working_directory=os.getcwd(), stdout=stdout
)
with context:
    logging.info("first")  # with delay=True, the handler opens its file now
    print("first", flush=True)
    if sys.argv[2] == "close":
        # The program drops the handler; its descriptor number is reused.
        logging.getLogger().removeHandler(handler)
        handler.close()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    os.rename("handler.log", "handler.log.1")
    os.rename("out.log", "out.log.1")
    os.kill(os.getpid(), signal.SIGHUP)
    context.stop_requested.wait(0.05)
    logging.info("second")
    print("second", flush=True)
    with open(REPORT, "w") as out:
        json.dump({"socket": os.readlink(f"/proc/self/fd/{sock.fileno()}")}, out)
"""


@pytest.mark.parametrize("case", ["delay", "close"])
def test_reopening_follows_the_program_s_own_descriptor_changes(
    daemons: Daemons, tmp_path: Path, case: str
) -> None:
    """A ``delay=True`` handler is reopened once it has opened its file; a
    closed handler's reused descriptor is left alone; a file object with a
    relative name is reopened."""
    launch, report = daemons.launch(CHANGED_AFTER_OPEN, args=[case])
    assert launch.returncode == 0, launch.stderr
    data = json.loads(report.read_text())
    assert data["socket"].startswith("socket:"), data  # never clobbered by a log file
    assert (tmp_path / "out.log.1").read_text() == "first\n"
    assert (tmp_path / "out.log").read_text() == "second\n"
    assert (tmp_path / "handler.log.1").read_text() == "first\n"
    if case == "delay":
        assert (tmp_path / "handler.log").read_text() == "second\n"
    else:  # closed: "second" went nowhere, and no new file was made for it
        assert not (tmp_path / "handler.log").exists()
