"""A daemon carries only what it needs: heavy modules stay out of its memory.

Every module imported before the fork is in the daemon's memory, and every
page of it is copied, at the first write, in the freshly forked daemon
(DESIGN §7 bounds the daemon's RSS at 0.5 MiB above a hand-written double
fork's). These tests pin down that the detach path, with or without a
``PIDFile``, does not import ``typing``, signal.py (its enums), lockfile
(socket, threading), fcntl (without a pidfile) or daemonkit's exception
module, unless something fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ["typing", "signal", "lockfile", "socket", "threading", "daemonkit.errors"]

PROGRAM = """
import json, os, sys
before = set(sys.modules)
import daemonkit

context = daemonkit.DaemonContext(
    detach_process=False,
    working_directory=os.getcwd(),
    pidfile=daemonkit.PIDFile(sys.argv[2]) if sys.argv[3] == "pidfile" else None,
)
with context:
    loaded = sorted(set(sys.modules) - before)
with open(sys.argv[1], "w") as out:
    json.dump({"loaded": loaded, "preloaded": sorted(before)}, out)
"""


@pytest.mark.parametrize("pidfile", ["pidfile", "none"])
def test_the_detach_path_leaves_heavy_modules_alone(tmp_path: Path, pidfile: str) -> None:
    report = tmp_path / "modules.json"
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM, str(report), str(tmp_path / "d.pid"), pidfile],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    heavy = [name for name in HEAVY if name in data["loaded"]]
    assert heavy == [], f"imported on the detach path: {heavy}"
    assert "daemonkit.context" in data["loaded"]  # the check itself is live
    if pidfile == "pidfile":
        assert "daemonkit.pidfile" in data["loaded"]  # with fcntl, for flock
    else:
        assert "fcntl" not in data["loaded"]


def test_lockfile_exceptions_are_still_raised_and_exported(tmp_path: Path) -> None:
    import lockfile

    import daemonkit
    import daemonkit.pidfile as pidfile_module

    assert pidfile_module.AlreadyLocked is lockfile.AlreadyLocked
    assert pidfile_module.NotMyLock is lockfile.NotMyLock
    with pytest.raises(AttributeError):
        pidfile_module.NoSuchName  # noqa: B018
    lock = daemonkit.PIDFile(tmp_path / "x.pid")
    with pytest.raises(lockfile.NotLocked):
        lock.release()
    assert issubclass(daemonkit.AlreadyRunningError, lockfile.AlreadyLocked)
