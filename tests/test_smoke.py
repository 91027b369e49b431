from __future__ import annotations

from conftest import Daemons, stop


def test_daemon_detaches_and_reports(daemons: Daemons) -> None:
    launch, report = daemons.launch(
        """
        with daemonkit.DaemonContext(working_directory="/"):
            facts.report(REPORT)
            linger()
        """
    )
    assert launch.returncode == 0, launch.stderr
    data = daemons.read_report(report)
    assert data["sid"] != data["pid"]
    assert data["tty_errno_name"] == "ENXIO"
    assert stop(data["pid"])
