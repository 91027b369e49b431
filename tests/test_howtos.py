"""The how-to guides (and the tutorial) say what works: their commands are run here.

A page marks the shell commands that can run anywhere with a MyST code block
of class ``dk-run``, and the files those commands need (a program, a script)
with class ``dk-file`` and the file's name as caption::

    ```{code-block} bash
    :class: dk-run

    # needs: logrotate
    daemonkit start --pidfile echo.pid -- ./server
    daemonkit status --pidfile nothing.pid    # exit status 3
    ```

For each page, every ``dk-file`` block is written into a scratch directory
(which also holds a link to the repository's ``examples/``), and every
``dk-run`` block's commands are run by one ``bash``, in page order, as a
reader would type them. Each command's exit status is checked: 0, or the N of
a trailing ``# exit status N`` comment. A block whose first lines say
``# needs: ...`` runs only where that is available (root, a PID namespace,
``nobody-can-run-python``, or a program on ``$PATH``); skipped blocks are
reported as warnings, and a page none of whose blocks can run is skipped.

The documented TCP ports (:data:`DOC_PORTS`) are replaced by free ones, so a
page cannot fail because something else listens on 8007. ``python3`` and
``daemonkit`` are the interpreter and code under test (shims in a directory
every user may read, so commands run through ``setpriv`` find them too).

Clean-up is by pid, never by name: the shell runs under a small subreaper,
which adopts every daemon the commands detach. When the shell is done, any
process still left after a grace period is reported (a page must stop what it
starts) and killed by pid; the holders of the scratch directory's pidfiles
and the subreaper's descendants are tracked by the ``daemons`` fixture as
well, in case the test itself is interrupted.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import PROJECT_DIR, Daemons, clean_env, free_port

import daemonkit.pidfile

DOCS = PROJECT_DIR / "docs"
HOWTOS = sorted(page for page in (DOCS / "howto").glob("*.md") if page.name != "index.md")
PAGES = [DOCS / "tutorial.md", *HOWTOS]

# The TCP ports the pages use; each is replaced by a free port per page run.
DOC_PORTS = (8007, 8008, 8040)

PAGE_TIME_LIMIT = 60.0  # seconds a page's commands may take, all together
LEFTOVER_GRACE = 2.0  # seconds for processes a page stopped to finish exiting

pytestmark = pytest.mark.timeout(120)

FENCE = re.compile(r"^(?P<fence>`{3,}|~{3,})\{code-block\}\s*(?P<language>\S*)\s*$")
OPTION = re.compile(r"^:(?P<name>[\w-]+):\s*(?P<value>.*)$")
EXPECTED = re.compile(r"#\s*exit status (?P<status>\d+)\b")
NEEDS = re.compile(r"^#\s*needs:\s*(?P<needs>.+)$")
# A here-document's operator and word (not ``<<<``, not a shift such as ``1 << 2``).
HEREDOC = re.compile(r"(?<!<)<<(?P<dash>-?)\s*(?P<quote>['\"]?)(?P<word>[A-Za-z_]\w*)(?P=quote)")


@dataclass
class Command:
    """One command as a reader would type it (continuation lines and here-documents
    included), with the exit status it must have."""

    text: str
    line: int  # 1-based line of the page where it starts
    expected: int


@dataclass
class RunBlock:
    """A ``dk-run`` block: its commands and what they need."""

    line: int
    commands: list[Command]
    needs: list[str] = field(default_factory=list)


@dataclass
class FileBlock:
    """A ``dk-file`` block: a file the commands use, named by its caption."""

    line: int
    name: str
    text: str


@dataclass
class Page:
    """What a page asks the test to write and to run, in page order."""

    path: Path
    blocks: list[RunBlock | FileBlock]


def _complete(text: str) -> bool:
    """True if ``text`` is a whole shell command: bash parses it without running out
    of input (an open quote, ``if`` without ``fi``, a trailing ``|``, ...)."""
    check = subprocess.run(
        ["bash", "-n", "-c", text],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    return not ("unexpected end of file" in check.stderr or "unexpected EOF" in check.stderr)


def split_commands(lines: list[str], first_line: int, where: str) -> list[Command]:
    """The commands in a ``dk-run`` block's lines (``first_line`` is the first one's
    line number on the page)."""
    commands: list[Command] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if not line.strip() or line.lstrip().startswith("#"):
            index += 1
            continue
        start = index
        text = line
        terminators = [(m["word"], bool(m["dash"])) for m in HEREDOC.finditer(line)]
        while True:
            if terminators:  # here-documents: take their bodies, up to each word
                for word, dash in terminators:
                    index += 1
                    while (
                        index < len(lines)
                        and (lines[index].lstrip("\t") if dash else lines[index]) != word
                    ):
                        text += "\n" + lines[index]
                        index += 1
                    if index >= len(lines):
                        raise ValueError(f"{where}:{first_line + start}: {word} never ends")
                    text += "\n" + lines[index]
                terminators = []
            if text.endswith("\\") or not _complete(text):
                index += 1
                if index >= len(lines):
                    raise ValueError(f"{where}:{first_line + start}: incomplete command")
                text += "\n" + lines[index]
                terminators = [(m["word"], bool(m["dash"])) for m in HEREDOC.finditer(lines[index])]
                continue
            break
        heads = [text.split("\n")[0], text.split("\n")[-1]]
        found = [match for head in heads if (match := EXPECTED.search(head))]
        expected = int(found[-1]["status"]) if found else 0
        commands.append(Command(text, first_line + start, expected))
        index += 1
    return commands


def parse_page(path: Path, text: str | None = None) -> Page:
    """Find the ``dk-run`` and ``dk-file`` blocks of the Markdown page at ``path``."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks: list[RunBlock | FileBlock] = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        fence, start = opening["fence"], index + 1
        options: dict[str, str] = {}
        index += 1
        while index < len(lines) and (option := OPTION.match(lines[index])):
            options[option["name"]] = option["value"].strip()
            index += 1
        body_start = index
        while index < len(lines) and not (
            lines[index].startswith(fence[0] * len(fence)) and not lines[index].strip(fence[0])
        ):
            index += 1
        body = lines[body_start:index]
        index += 1
        while body and not body[0].strip():  # MyST drops the blank line after options
            body.pop(0)
            body_start += 1
        classes = options.get("class", "").split()
        where = path.name
        if "dk-run" in classes:
            needs: list[str] = []
            for line in body:
                if not line.startswith("#"):
                    break
                if wanted := NEEDS.match(line):
                    needs += [need.strip() for need in wanted["needs"].split(",")]
            commands = split_commands(body, body_start + 1, where)
            blocks.append(RunBlock(start, commands, needs))
        elif "dk-file" in classes:
            if not options.get("caption"):
                raise ValueError(f"{where}:{start}: a dk-file block needs a :caption: (its name)")
            blocks.append(FileBlock(start, options["caption"], "\n".join(body) + "\n"))
        elif any(name.startswith("dk-") for name in classes):
            raise ValueError(f"{where}:{start}: unknown class in {classes}")
    return Page(path, blocks)


AS_NOBODY = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]


def _python_runs_as_nobody() -> bool:
    # The exec must happen as nobody: setpriv itself execs while it still has
    # root's capabilities, so it may reach an interpreter nobody cannot.
    probe = subprocess.run(
        [*AS_NOBODY, "sh", "-c", 'exec "$0" -c "import daemonkit"', sys.executable],
        capture_output=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


def missing_need(need: str) -> str | None:
    """Why ``need`` is not met here, or None if it is."""
    if need == "root":
        return None if os.geteuid() == 0 else "not running as root"
    if need == "pid-namespace":
        if shutil.which("unshare") is None:
            return "unshare is not installed"
        probe = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"],
            capture_output=True,
            timeout=30,
            check=False,
        )
        return None if probe.returncode == 0 else "this kernel or sandbox refuses unshare --pid"
    if need == "nobody-can-run-python":
        if shutil.which("setpriv") is None or os.geteuid() != 0:
            return "needs root and setpriv to tell"
        return None if _python_runs_as_nobody() else f"nobody cannot run {sys.executable}"
    if re.fullmatch(r"[\w.+-]+", need) is None:
        return f"unknown need {need!r}"
    return None if shutil.which(need) else f"{need} is not installed"


def make_shims(folder: Path) -> Path:
    """``python3`` and ``daemonkit`` as the interpreter and package under test."""
    folder.mkdir(mode=0o755, exist_ok=True)
    python = shlex.quote(sys.executable)
    for name, line in (
        ("python3", f'exec {python} "$@"'),
        ("daemonkit", f'exec {python} -m daemonkit "$@"'),
    ):
        shim = folder / name
        shim.write_text(f"#!/bin/sh\n{line}\n")
        shim.chmod(0o755)
    return folder


def page_script(page: Page, ports: dict[int, int]) -> tuple[str, dict[str, str], list[str]]:
    """The bash script that runs the page's commands with their checks, the files to
    write first, and the blocks that cannot run here (with why)."""
    pattern = re.compile(r"(?<!\d)(" + "|".join(map(str, ports)) + r")(?!\d)")

    def ported(text: str) -> str:
        return pattern.sub(lambda match: str(ports[int(match[1])]), text)

    files: dict[str, str] = {}
    skipped: list[str] = []
    script = [
        "set -o pipefail",
        "dk_check() {",
        '    if [ "$1" -ne "$2" ]; then',
        '        printf "dk-howto: %s: exit status %s, expected %s\\n" "$3" "$1" "$2" >&2',
        "        exit 97",
        "    fi",
        "}",
    ]
    for block in page.blocks:
        if isinstance(block, FileBlock):
            files[block.name] = ported(block.text)
            continue
        reasons = [reason for need in block.needs if (reason := missing_need(need))]
        if reasons:
            skipped.append(f"{page.path.name}:{block.line}: not run: {'; '.join(reasons)}")
            continue
        for command in block.commands:
            where = f"{page.path.name}:{command.line}"
            script.append(f"printf '+ %s\\n' {shlex.quote(where)}")
            script.append(ported(command.text))
            script.append(f"dk_check $? {command.expected} {shlex.quote(where)}")
    script.append("printf 'dk-howto: all commands passed\\n'")
    return "\n".join(script) + "\n", files, skipped


# Runs the page's script under a subreaper, so every daemon the commands detach
# is adopted here; then reports the shell's status and kills, by pid, whatever
# is still running once the grace period is over.
RUNNER = """\
import ctypes, json, os, signal, subprocess, sys, time

PR_SET_CHILD_SUBREAPER = 36
if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
    sys.exit(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")
script, workdir, report, limit, grace = sys.argv[1:6]


def children(pid):
    found = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                found += [int(child) for child in listing.read().split()]
        except OSError:
            pass
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def descendants():
    found, todo = [], children(os.getpid())
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children(pid)
    return [pid for pid in found if alive(pid)]


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def command_line(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as raw:
            return raw.read().replace(b"\\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


shell = subprocess.Popen(["bash", script], cwd=workdir, stdin=subprocess.DEVNULL)
try:
    status = shell.wait(timeout=float(limit))
    timed_out = False
except subprocess.TimeoutExpired:
    shell.kill()
    status = shell.wait()
    timed_out = True
deadline = time.monotonic() + float(grace)
while True:
    reap()
    left = descendants()
    if not left or time.monotonic() > deadline:
        break
    time.sleep(0.05)
leftovers = [(pid, command_line(pid)) for pid in left]
for pid, _ in leftovers:
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        continue
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except OSError:
        pass
    finally:
        os.close(pidfd)
end = time.monotonic() + 10
while descendants() and time.monotonic() < end:
    reap()
    time.sleep(0.02)
reap()
with open(report, "w") as out:
    json.dump({"status": status, "timed_out": timed_out, "leftovers": leftovers}, out)
"""


@dataclass
class PageRun:
    """How a page's commands went."""

    status: int
    timed_out: bool
    leftovers: list[tuple[int, str]]
    output: str
    skipped: list[str]


def _descendants_of(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as listing:
                    kids = [int(child) for child in listing.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def run_page(page: Page, workdir: Path, shims: Path, daemons: Daemons) -> PageRun:
    """Write the page's files into ``workdir`` and run its commands there."""
    ports: dict[int, int] = {}
    for port in DOC_PORTS:
        new = free_port()
        while new in ports.values():
            new = free_port()
        ports[port] = new
    script, files, skipped = page_script(page, ports)
    workdir.mkdir(exist_ok=True)
    (workdir / "examples").symlink_to(PROJECT_DIR / "examples")
    for name, text in files.items():
        (workdir / name).write_text(text)
    script_path = workdir.parent / f"{page.path.stem}.sh"
    script_path.write_text(script)
    report = workdir.parent / f"{page.path.stem}.json"
    output = workdir.parent / f"{page.path.stem}.out"
    env = clean_env()
    env["PATH"] = f"{shims}{os.pathsep}{env.get('PATH', os.defpath)}"
    env.pop("PYTHON", None)  # examples/container reads it; python3 is the shim
    runner_arguments = (script_path, workdir, report, PAGE_TIME_LIMIT, LEFTOVER_GRACE)
    with output.open("w") as sink:
        runner = subprocess.Popen(
            [sys.executable, "-c", RUNNER, *map(str, runner_arguments)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    daemons.track(runner.pid)
    try:
        runner.wait(timeout=PAGE_TIME_LIMIT + LEFTOVER_GRACE + 30)
    finally:
        # If the runner could not finish its own clean-up, the fixture's will.
        for pid in _descendants_of(runner.pid):
            daemons.track(pid)
        for pidfile in workdir.rglob("*.pid"):
            found = daemonkit.pidfile.status(pidfile)
            if found.running and found.pid is not None:
                daemons.track(found.pid)
    text = output.read_text(errors="replace")
    assert runner.returncode == 0, f"the runner failed ({runner.returncode}):\n{text}"
    result = json.loads(report.read_text())
    return PageRun(
        result["status"],
        result["timed_out"],
        [(pid, line) for pid, line in result["leftovers"]],
        text,
        skipped,
    )


@pytest.fixture
def shims(shared_dir: Path) -> Path:
    """A directory with the ``python3`` and ``daemonkit`` shims, readable by anyone."""
    return make_shims(shared_dir / "bin")


def _page_id(path: Path) -> str:
    return str(path.relative_to(DOCS))


@pytest.mark.parametrize("path", PAGES, ids=_page_id)
def test_page_commands_run(path: Path, tmp_path: Path, shims: Path, daemons: Daemons) -> None:
    """Every marked command of the page runs, in order, with the documented exit status,
    and the page leaves no process running: what the page tells a reader works."""
    page = parse_page(path)
    runs = [block for block in page.blocks if isinstance(block, RunBlock)]
    if not runs:
        pytest.skip(f"{path.name} marks no command to run")
    result = run_page(page, tmp_path / "work", shims, daemons)
    for reason in result.skipped:
        warnings.warn(reason, stacklevel=1)
    if len(result.skipped) == len(runs):
        pytest.skip("; ".join(result.skipped))
    tail = result.output[-6000:]
    assert not result.timed_out, f"the commands took over {PAGE_TIME_LIMIT} s:\n{tail}"
    assert result.status == 0, f"a command failed (see dk-howto below):\n{tail}"
    assert "dk-howto: all commands passed" in result.output, tail
    assert result.leftovers == [], f"the page left processes running: {result.leftovers}"


@pytest.mark.parametrize("path", HOWTOS, ids=_page_id)
def test_every_howto_runs_commands(path: Path) -> None:
    """Each how-to guide marks commands to run, so none is documentation only, and
    every block's needs are ones this test knows how to check."""
    page = parse_page(path)
    runs = [block for block in page.blocks if isinstance(block, RunBlock)]
    assert runs, f"{path.name} has no dk-run block"
    assert all(block.commands for block in runs), f"{path.name} has an empty dk-run block"
    for block in runs:
        for need in block.needs:
            assert "unknown need" not in (missing_need(need) or ""), (path.name, block.line, need)


def test_parser_splits_commands_as_bash_reads_them(tmp_path: Path) -> None:
    """Continuation lines, multi-line quotes and here-documents make one command each,
    comments are skipped, and ``# exit status N`` sets the expected status, so a page's
    commands are checked one by one, as a reader types them."""
    text = "\n".join(
        [
            "intro",
            "```{code-block} bash",
            ":class: dk-run",
            "",
            "# needs: root, tar",
            "echo one \\",
            "    two",
            'python3 -c "',
            "print(1)",
            '"    # exit status 0',
            "cat > f <<'EOF'",
            "# not a comment: file content",
            "EOF",
            "false    # exit status 1",
            "```",
            "```{code-block} python",
            ":caption: prog.py",
            ":class: dk-file",
            "",
            "print('hi')",
            "```",
        ]
    )
    page = parse_page(tmp_path / "fake.md", text)
    run, written = page.blocks
    assert isinstance(run, RunBlock) and isinstance(written, FileBlock)
    assert run.needs == ["root", "tar"]
    assert [(command.line, command.expected) for command in run.commands] == [
        (6, 0),
        (8, 0),
        (11, 0),
        (14, 1),
    ]
    assert run.commands[0].text == "echo one \\\n    two"
    assert run.commands[2].text.endswith("# not a comment: file content\nEOF")
    assert (written.name, written.text) == ("prog.py", "print('hi')\n")


def test_a_failing_command_fails_the_page(tmp_path: Path, shims: Path, daemons: Daemons) -> None:
    """The harness itself must not pass silently: a command with the wrong exit status
    stops the page (nothing after it runs) and is named in the output."""
    text = "\n".join(
        [
            "```{code-block} bash",
            ":class: dk-run",
            "",
            "true",
            "daemonkit status --pidfile nothing.pid    # exit status 3",
            "daemonkit status --pidfile nothing.pid",
            "touch not-reached",
            "```",
        ]
    )
    page = parse_page(tmp_path / "failing.md", text)
    result = run_page(page, tmp_path / "work", shims, daemons)
    assert result.status == 97
    assert "dk-howto: failing.md:6: exit status 3, expected 0" in result.output
    assert not (tmp_path / "work" / "not-reached").exists()


def test_a_page_that_leaves_a_daemon_is_caught(
    tmp_path: Path, shims: Path, daemons: Daemons
) -> None:
    """A daemon a page starts and does not stop is reported as a leftover and killed by
    its pid (the subreaper adopted it), so a page cannot leak processes unnoticed."""
    text = "\n".join(
        [
            "```{code-block} bash",
            ":class: dk-run",
            "",
            "daemonkit start --pidfile left.pid -- sleep 600",
            "```",
        ]
    )
    page = parse_page(tmp_path / "leaky.md", text)
    result = run_page(page, tmp_path / "work", shims, daemons)
    assert result.status == 0, result.output
    assert [line for _, line in result.leftovers] == ["sleep 600"]
    assert not daemonkit.pidfile.status(tmp_path / "work" / "left.pid").running
