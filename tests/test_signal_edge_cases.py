"""Edge cases found in review: chroot, forked children, raising handlers, names.

- An error after ``chroot`` is reported as the ``DaemonError`` it is: the
  exception module was loaded before the jail (not imported from inside it,
  as root), and ``stop_requested.wait()`` works in a jail (no ``threading``).
- A child the daemon forks that sets ``stop_requested`` does not make the
  parent's ``wait()`` spin.
- Signals queued behind a handler that raises are all handled, even when
  the next one raises too.
- Signal names are ``signal.Signals``'s (SIGABRT, not SIGIOT).
- ``run_async`` runs the handler in place when it starts, not the map's.
- A SIGTERM handled as the setup finishes does not remove the log file the
  streams already point at.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from daemonkit import _posix

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chroot needs root")


def run_python(code: str, cwd: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@needs_root
def test_an_error_inside_the_chroot_is_the_intended_error(tmp_path: Path) -> None:
    jail = tmp_path / "jail"
    jail.mkdir()
    (tmp_path / "hostonly").mkdir()
    # Passes the launcher's check (the link resolves on the host), fails inside.
    (jail / "wd").symlink_to(tmp_path / "hostonly")
    # A planted errors.py in the jail, where an import from inside would look.
    planted = jail / Path(*Path(__file__).resolve().parents[1].parts[1:]) / "daemonkit"
    planted.mkdir(parents=True)
    (planted / "errors.py").write_text("open('/PLANTED', 'w').write('ran')\n")
    result = run_python(
        "import daemonkit\n"
        f"with daemonkit.DaemonContext(chroot_directory={str(jail)!r}, "
        "working_directory='/wd', detach_process=True):\n    pass\n",
        tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert "cannot change working directory to '/wd'" in result.stderr
    assert "DaemonOSEnvironmentError" in result.stderr
    assert "ModuleNotFoundError" not in result.stderr
    assert not (jail / "PLANTED").exists(), "code from inside the jail ran"


@needs_root
def test_stop_requested_wait_works_in_a_chroot(tmp_path: Path) -> None:
    jail = tmp_path / "jail"
    jail.mkdir()
    result = run_python(
        "import daemonkit, os\n"
        f"out = open({str(jail / 'out.txt')!r}, 'a')\n"
        f"ctx = daemonkit.DaemonContext(chroot_directory={str(jail)!r}, "
        "detach_process=False, stdout=out, stderr=out)\n"
        "with ctx:\n"
        "    print('wait ->', ctx.stop_requested.wait(0.05), flush=True)\n"
        "    ctx.request_stop()\n"
        "    print('wait ->', ctx.stop_requested.wait(), flush=True)\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert (jail / "out.txt").read_text() == "wait -> False\nwait -> True\n"


def test_a_forked_child_setting_the_flag_does_not_make_the_parent_spin(
    tmp_path: Path,
) -> None:
    result = run_python(
        "import os, time, json\n"
        "from daemonkit import StopRequest\n"
        "stop = StopRequest()\n"
        "stop.fileno()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    stop.set()\n"
        "    os._exit(0 if stop.wait(0) else 1)\n"
        "child = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])\n"
        "cpu = time.process_time()\n"
        "waited = stop.wait(0.5)\n"
        "print(json.dumps({'child': child, 'waited': waited, "
        "'cpu': time.process_time() - cpu}))\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["child"] == 0  # the child's own flag is set
    assert data["waited"] is False  # the parent's is not
    assert data["cpu"] < 0.2, data  # it slept, it did not spin


def test_signals_queued_behind_raising_handlers_are_all_handled(tmp_path: Path) -> None:
    result = run_python(
        "import os, signal\n"
        "from daemonkit.signals import Installation\n"
        "calls = []\n"
        "class Boom(Exception): pass\n"
        "def usr1(s, f):\n"
        "    calls.append('USR1')\n"
        "    os.kill(os.getpid(), signal.SIGUSR2)\n"
        "    os.kill(os.getpid(), signal.SIGHUP)\n"
        "    raise Boom('usr1')\n"
        "def usr2(s, f):\n"
        "    calls.append('USR2'); raise Boom('usr2')\n"
        "def hup(s, f):\n"
        "    calls.append('HUP')\n"
        "Installation({signal.SIGUSR1: usr1, signal.SIGUSR2: usr2, signal.SIGHUP: hup})"
        ".install()\n"
        "for _ in range(3):\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGUSR1) if not calls else sum(range(10000))\n"
        "    except Boom:\n"
        "        pass\n"
        "print(' '.join(calls))\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["USR1", "USR2", "HUP"]


def test_signal_names_are_those_of_signal_signals() -> None:
    for sig in signal.Signals:
        assert _posix.signal_name(sig) == sig.name
    assert _posix.signal_name(signal.SIGABRT) == "SIGABRT"
    assert _posix.signal_name(signal.SIGCHLD) == "SIGCHLD"


def test_run_async_runs_the_handler_in_place_when_it_starts(tmp_path: Path) -> None:
    result = run_python(
        "import asyncio, os, signal, sys\n"
        "import daemonkit\n"
        "ctx = daemonkit.DaemonContext(detach_process=False, working_directory=os.getcwd(), "
        "stdout=sys.stdout, stderr=sys.stderr)\n"
        "with ctx:\n"
        "    signal.signal(signal.SIGTERM, lambda s, f: print('own handler', flush=True))\n"
        "    async def main():\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        await asyncio.sleep(0.1)\n"
        "        return 'returned'\n"
        "    print(daemonkit.run_async(main()), flush=True)\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["own handler", "returned"]


def test_a_sigterm_at_the_end_of_setup_keeps_the_log_file(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    result = run_python(
        "import os, signal, daemonkit\n"
        "class Pidfile:  # lockfile-style, entered in the daemon just before fds 0-2\n"
        "    def __enter__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)  # held back until setup is done\n"
        "        return self\n"
        "    def __exit__(self, *exc_info):\n"
        "        pass\n"
        f"ctx = daemonkit.DaemonContext(detach_process=False, working_directory=os.getcwd(), "
        f"stdout={str(log)!r}, pidfile=Pidfile())\n"
        "try:\n"
        "    ctx.open()\n"
        "except SystemExit:\n"
        "    print('stopped during setup', flush=True)\n",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert log.read_text() == "stopped during setup\n"  # the file is still there
