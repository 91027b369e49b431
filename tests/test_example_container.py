"""The container example (examples/container/) runs as a container engine would run it.

``run_in_namespace.sh`` starts the Dockerfile's ENTRYPOINT and CMD as PID 1
of a private PID namespace and checks reaping, restart and SIGTERM itself;
this test runs it and, whatever happens, kills the namespace's PID 1 by pid
(every process in the namespace dies with it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import PROJECT_DIR

CONTAINER = PROJECT_DIR / "examples" / "container"

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="unshare --pid needs root"),
]


def namespace_works() -> bool:
    probe = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"], check=False)
    return probe.returncode == 0


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                found.extend(int(word) for word in listing.read().split())
    except (OSError, ValueError):
        pass
    return found


def test_dockerfile_runs_daemonkit_as_init_with_respawn() -> None:
    """The image's PID 1 is ``daemonkit run --init --respawn`` with a start limit."""
    lines = (CONTAINER / "Dockerfile").read_text().splitlines()
    entry = next(
        json.loads(line.split(None, 1)[1]) for line in lines if line.startswith("ENTRYPOINT ")
    )
    assert entry[:4] == ["daemonkit", "run", "--init", "--respawn"]
    assert "--max-restarts" in entry and entry[-1] == "--"


def test_container_example_in_a_pid_namespace() -> None:
    """The script's checks all pass: PID 1 reaps, restarts, and stops cleanly on SIGTERM."""
    if not namespace_works():
        pytest.skip("unshare --pid is refused here")
    script = subprocess.Popen(
        ["bash", str(CONTAINER / "run_in_namespace.sh")],
        env={**os.environ, "PYTHON": sys.executable},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = script.communicate(timeout=90)
    finally:
        if script.poll() is None:  # hung: kill the namespace's PID 1, then the script
            for unshare in children(script.pid):
                for init in children(unshare):
                    os.kill(init, 9)
            script.kill()
            script.wait(10)
            time.sleep(0.1)
    assert script.returncode == 0, output
    assert "all checks passed" in output
    assert "FAILED" not in output
