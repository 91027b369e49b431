"""Standard streams of the daemon: /dev/null by default, file objects (PEP 3143)
or paths (opened for append; stdin read-only), redirections that do not
clobber each other, and no output written twice because of the fork.

The daemon's descriptors are checked from outside through ``/proc`` (targets
and open flags), and the files' contents after the daemon wrote to them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from conftest import Daemons, daemon_facts, wait_gone

STDIO = ("0", "1", "2")


def open_flags(pid: int, fd: int) -> int:
    """The open flags of descriptor ``fd`` of process ``pid`` (from fdinfo)."""
    with open(f"/proc/{pid}/fdinfo/{fd}") as info:
        for line in info:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)
    raise AssertionError(f"no flags in /proc/{pid}/fdinfo/{fd}")


def test_default_streams_are_dev_null(daemons: Daemons, tmp_path: Path) -> None:
    # Give the launcher a real stdin file, so /dev/null there is daemonkit's doing
    # (stdout and stderr are the harness's pipes).
    (tmp_path / "input.txt").write_text("input\n")
    with open(tmp_path / "input.txt") as stdin:
        launch, report = daemons.launch(
            """
            with daemonkit.DaemonContext():
                facts.report(REPORT)
                linger()
            """,
            stdin=stdin,
        )
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert [data["fds"][fd] for fd in STDIO] == ["/dev/null"] * 3
    assert sorted(data["fds"]) == list(STDIO)
    for fd in (0, 1, 2):
        assert open_flags(data["pid"], fd) & os.O_ACCMODE == os.O_RDWR


CLOSED_STDIO_BODY = """
closed = [int(fd) for fd in sys.argv[2].split(",")]
for fd in closed:
    os.close(fd)
with daemonkit.DaemonContext():
    facts.report(REPORT)
    linger()
"""


@pytest.mark.parametrize("closed", ["0", "1", "2", "0,1", "0,2", "1,2", "0,1,2"])
def test_launcher_with_closed_standard_descriptors(daemons: Daemons, closed: str) -> None:
    """Started with some of fds 0-2 closed, the daemon still gets all three."""
    launch, report = daemons.launch(CLOSED_STDIO_BODY, args=[closed])
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert sorted(data["fds"]) == list(STDIO)
    assert [data["fds"][fd] for fd in STDIO] == ["/dev/null"] * 3


def test_file_objects_are_used(daemons: Daemons, tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("from stdin\n")
    launch, report = daemons.launch(
        """
        stdin = open("in.txt")
        stdout = open("out.txt", "a")
        stderr = open("err.txt", "a+")
        with daemonkit.DaemonContext(stdin=stdin, stdout=stdout, stderr=stderr):
            line = sys.stdin.readline()
            print("to stdout", flush=True)
            print("to stderr", file=sys.stderr, flush=True)
            os.write(1, b"fd 1\\n")
            os.write(2, b"fd 2\\n")
            facts.report(REPORT, line=line)
            linger()
        """
    )
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert data["fds"]["0"] == str(tmp_path / "in.txt")
    assert data["fds"]["1"] == str(tmp_path / "out.txt")
    assert data["fds"]["2"] == str(tmp_path / "err.txt")
    assert data["line"] == "from stdin\n"
    assert (tmp_path / "out.txt").read_text() == "to stdout\nfd 1\n"
    assert (tmp_path / "err.txt").read_text() == "to stderr\nfd 2\n"


@pytest.mark.parametrize("kind", ["str", "pathlib"])
def test_paths_are_opened_for_append(daemons: Daemons, tmp_path: Path, kind: str) -> None:
    out, err = tmp_path / "out.log", tmp_path / "err.log"
    out.write_text("old out\n")
    err.write_text("old err\n")
    out.chmod(0o600)
    err.chmod(0o640)
    launch, report = daemons.launch(
        f"""
        import pathlib
        convert = {"str" if kind == "str" else "pathlib.Path"}
        context = daemonkit.DaemonContext(
            stdout=convert({str(out)!r}), stderr=convert({str(err)!r})
        )
        with context:
            print("new out", flush=True)
            print("new err", file=sys.stderr, flush=True)
            facts.report(REPORT)
            linger()
        """
    )
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert data["fds"]["1"] == str(out)
    assert data["fds"]["2"] == str(err)
    for fd in (1, 2):
        flags = open_flags(data["pid"], fd)
        assert flags & os.O_ACCMODE == os.O_WRONLY
        assert flags & os.O_APPEND
    assert out.read_text() == "old out\nnew out\n"
    assert err.read_text() == "old err\nnew err\n"
    # An existing file keeps its mode.
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(err.stat().st_mode) == 0o640


@pytest.mark.parametrize(
    ("launcher_umask", "context_umask", "mode"),
    [
        pytest.param(0o022, None, 0o644, id="default-umask"),
        pytest.param(0o022, 0o027, 0o640, id="umask-027"),
        pytest.param(0o022, 0o077, 0o600, id="umask-077"),
        pytest.param(0o077, None, 0o644, id="stricter-launcher-umask"),
        pytest.param(0o022, 0o002, 0o664, id="looser-context-umask"),
        pytest.param(0o022, 0o000, 0o664, id="umask-0-never-world-writable"),
    ],
)
def test_created_stream_file_mode(
    daemons: Daemons,
    tmp_path: Path,
    launcher_umask: int,
    context_umask: int | None,
    mode: int,
) -> None:
    """A stream file that does not exist yet is created 0o664 & ~umask (the daemon's):
    never writable by everyone, whatever the umask."""
    out = tmp_path / "logs" / "new.log"
    out.parent.mkdir()
    kwargs = "" if context_umask is None else f", umask={context_umask}"
    launch, report = daemons.launch(
        f"""
        os.umask({launcher_umask})
        with daemonkit.DaemonContext(stdout={str(out)!r}, stderr={str(out)!r}{kwargs}):
            print("created", flush=True)
            facts.report(REPORT)
            linger()
        """
    )
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert data["fds"]["1"] == str(out)
    assert out.read_text() == "created\n"
    assert stat.S_IMODE(out.stat().st_mode) == mode


@pytest.mark.parametrize("same", ["path", "file-object"])
def test_stdout_and_stderr_to_the_same_file(daemons: Daemons, tmp_path: Path, same: str) -> None:
    log = tmp_path / "both.log"
    log.write_text("start\n")
    target = repr(str(log)) if same == "path" else f"open({str(log)!r}, 'a')"
    launch, report = daemons.launch(
        f"""
        target = {target}
        with daemonkit.DaemonContext(stdout=target, stderr=target):
            for n in range(3):
                print(f"out {{n}}", flush=True)
                print(f"err {{n}}", file=sys.stderr, flush=True)
            os.write(1, b"fd 1\\n")
            os.write(2, b"fd 2\\n")
            facts.report(REPORT)
            linger()
        """
    )
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert data["fds"]["1"] == data["fds"]["2"] == str(log)
    # Nothing overwritten: every line, in order, after what was there before.
    assert log.read_text() == "start\nout 0\nerr 0\nout 1\nerr 1\nout 2\nerr 2\nfd 1\nfd 2\n"


@pytest.mark.parametrize(
    ("stdout", "stderr", "fd1", "fd2"),
    [
        pytest.param("sys.stderr", "sys.stdout", "b.txt", "a.txt", id="swapped"),
        pytest.param("None", "sys.stdout", "/dev/null", "a.txt", id="stderr=sys.stdout"),
        pytest.param("sys.stdout", "sys.stdout", "a.txt", "a.txt", id="both=sys.stdout"),
        pytest.param("sys.stderr", "None", "b.txt", "/dev/null", id="stdout=sys.stderr"),
        pytest.param("sys.stderr", "sys.stderr", "b.txt", "b.txt", id="both=sys.stderr"),
    ],
)
def test_cross_redirection_does_not_clobber(
    daemons: Daemons, tmp_path: Path, stdout: str, stderr: str, fd1: str, fd2: str
) -> None:
    """``stderr=sys.stdout`` and the like: each stream gets the launcher's target."""
    launch, report = daemons.launch(
        f"""
        # The launcher's own stdout and stderr are a.txt and b.txt.
        os.dup2(os.open("a.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), 1)
        os.dup2(os.open("b.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), 2)
        with daemonkit.DaemonContext(stdout={stdout}, stderr={stderr}):
            os.write(1, b"daemon fd 1\\n")
            os.write(2, b"daemon fd 2\\n")
            facts.report(REPORT)
            linger()
        """
    )
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    expected = {
        "1": fd1 if fd1 == "/dev/null" else str(tmp_path / fd1),
        "2": fd2 if fd2 == "/dev/null" else str(tmp_path / fd2),
    }
    assert {fd: data["fds"][fd] for fd in ("1", "2")} == expected
    assert data["fds"]["0"] == "/dev/null"
    written: dict[str, str] = {"a.txt": "", "b.txt": ""}
    for fd, name in (("1", fd1), ("2", fd2)):
        if name != "/dev/null":
            written[name] += f"daemon fd {fd}\n"
    assert (tmp_path / "a.txt").read_text() == written["a.txt"]
    assert (tmp_path / "b.txt").read_text() == written["b.txt"]


@pytest.mark.parametrize(
    ("kwargs", "expected_out", "expected_err"),
    [
        pytest.param("", "out before open", "err before open", id="dev-null"),
        pytest.param(
            "stdout='out.txt', stderr='err.txt'",
            "out before open" + "out after\n",
            "err before open" + "err after\n",
            id="same-files",
        ),
    ],
)
def test_output_before_open_is_not_written_twice(
    daemons: Daemons, tmp_path: Path, kwargs: str, expected_out: str, expected_err: str
) -> None:
    """Python's buffered stdout/stderr are flushed before the fork, exactly once."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    launch, report = daemons.launch(
        f"""
        os.dup2(os.open("out.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), 1)
        os.dup2(os.open("err.txt", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), 2)
        # No newline, so stdout has not written anything yet.
        sys.stdout.write("out before open")
        sys.stderr.write("err before open")
        # (stdout is block-buffered; stderr is write-through in Python 3.9+)
        buffered = os.path.getsize("out.txt") == 0
        with daemonkit.DaemonContext(working_directory=os.getcwd(), {kwargs}):
            print("out after")
            print("err after", file=sys.stderr)
            facts.report(REPORT, buffered=buffered)
        # The daemon exits normally here, flushing whatever it still buffers.
        """,
        env=env,
    )
    data = daemon_facts(daemons, launch, report)
    assert wait_gone(data["pid"])

    assert launch.returncode == 0, launch.stderr
    assert data["buffered"], "setup: the output was still in Python's buffers"
    assert (tmp_path / "out.txt").read_text() == expected_out
    assert (tmp_path / "err.txt").read_text() == expected_err


def test_stdin_path_is_opened_read_only(daemons: Daemons, tmp_path: Path) -> None:
    source = tmp_path / "input.txt"
    source.write_text("first line\nsecond line\n")
    source.chmod(0o644)
    before = source.stat()
    launch, report = daemons.launch(
        f"""
        with daemonkit.DaemonContext(stdin={str(source)!r}):
            facts.report(REPORT, read=sys.stdin.read())
            linger()
        """
    )
    data = daemon_facts(daemons, launch, report)

    assert launch.returncode == 0, launch.stderr
    assert data["fds"]["0"] == str(source)
    assert data["read"] == "first line\nsecond line\n"
    assert open_flags(data["pid"], 0) & os.O_ACCMODE == os.O_RDONLY
    after = source.stat()
    assert (after.st_size, after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == (
        before.st_size,
        before.st_mtime_ns,
        0o644,
    )


def test_missing_stdin_path_fails_in_launcher(daemons: Daemons, tmp_path: Path) -> None:
    """stdin is never created: a missing file is an error before any fork."""
    missing = tmp_path / "missing.txt"
    launch, report = daemons.launch(
        f"""
        def forked():
            with open(REPORT + ".forked", "a") as marker:
                marker.write(f"{{os.getpid()}}\\n")

        os.register_at_fork(before=forked)
        try:
            with daemonkit.DaemonContext(stdin={str(missing)!r}):
                facts.report(REPORT)
        except daemonkit.StreamError:
            facts.report(REPORT + ".error")
            raise
        """
    )

    assert launch.returncode != 0
    assert "StreamError" in launch.stderr
    assert str(missing) in launch.stderr
    assert not missing.exists()
    assert not report.exists()
    assert not Path(f"{report}.forked").exists()
    assert Path(f"{report}.error").exists()
