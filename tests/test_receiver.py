"""The launcher-side sd_notify receiver waits for any program that speaks the protocol."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import Daemons

from daemonkit import readiness
from daemonkit.errors import StartupError
from daemonkit.notify import NotifySocketReceiver

SPEAKER = """
import socket, os, sys, time
address = os.environ["NOTIFY_SOCKET"]
target = b"\\0" + address[1:].encode() if address.startswith("@") else address
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    sock.sendto(b"STATUS=warming up", target)
    time.sleep(0.3)
    sock.sendto(b"READY=1\\nSTATUS=serving", target)
time.sleep(30)
"""


def test_waits_for_a_program_that_is_not_daemonkit(daemons: Daemons) -> None:
    """A plain socket client (no daemonkit) releases the wait with READY=1."""
    with NotifySocketReceiver() as receiver:
        assert receiver.address.startswith("@")
        env = dict(os.environ, **receiver.environment())
        began = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-c", SPEAKER], env=env)
        daemons.track(proc.pid)
        try:
            outcome = readiness.wait_until_ready(receiver, proc.pid, None, 10, show_status=False)
            waited = time.monotonic() - began
        finally:
            proc.kill()
            proc.wait(5)
    assert outcome.statuses == ["warming up", "serving"]
    assert waited >= 0.3
    assert set(receiver.senders) == {proc.pid}  # SO_PASSCRED names the sender


def test_times_out_on_a_silent_program(daemons: Daemons) -> None:
    with NotifySocketReceiver() as receiver:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        daemons.track(proc.pid)
        try:
            with pytest.raises(StartupError, match=r"not ready within 0\.5 s"):
                readiness.wait_until_ready(receiver, proc.pid, None, 0.5, show_status=False)
        finally:
            proc.kill()
            proc.wait(5)
