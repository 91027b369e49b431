"""Changing the daemon's owner and root directory, as root and as an ordinary user.

As root the daemon must end up with every uid and gid (real, effective,
saved) switched, supplementary groups cleared (or the user's own with
``initgroups=True``), and no way back to root. Without root, asking for a
change that needs it must fail in the launcher before any fork.

Launchers that run as ``nobody`` start as root and drop to ``nobody`` with
``setresuid`` before they touch daemonkit (see test_validation.drop_to): this
interpreter may live where ``nobody`` cannot read it, so starting it as
``nobody`` (preexec_fn, setpriv) is not portable, while a launcher that drops
first is, for daemonkit, an ordinary unprivileged process.

Daemon scripts wait in 0.05 s sleeps, never one long ``time.sleep(30)``:
CPython runs a Python signal handler between bytecodes, so a SIGTERM that
lands just before a long sleep starts is only handled when the sleep ends.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from conftest import Daemons, is_alive, stop
from test_validation import drop_to_nobody, expect_refused, nobody

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="privilege changes need root")

# The daemon takes its facts, then checks whether root can be regained (which
# changes them, if it can), and reports both.
REPORT_AND_TRY_ROOT = """\
initial = facts.collect()


def try_call(function, *args):
    try:
        function(*args)
    except OSError as exc:
        return exc.errno
    return 0


regain = {
    "setuid": try_call(os.setuid, 0),
    "seteuid": try_call(os.seteuid, 0),
    "setgid": try_call(os.setgid, 0),
    "setgroups": try_call(os.setgroups, [0]),
}
facts.report(OUT, initial=initial, regain=regain)
for _ in range(600): time.sleep(0.05)
"""


def user_with_supplementary_groups() -> pwd.struct_passwd:
    """A non-root user that is a member of some group besides its own; else nobody."""
    for group in grp.getgrall():
        for member in group.gr_mem:
            try:
                user = pwd.getpwnam(member)
            except KeyError:
                continue
            if user.pw_uid != 0 and group.gr_gid != user.pw_gid:
                return user
    return nobody()


# Supplementary groups the (root) launcher holds, so that clearing them shows.
LAUNCHER_GROUPS = [0, 4, 6]


def launch_as(daemons: Daemons, open_dir: Path, context_kwargs: str) -> tuple[dict[str, Any], int]:
    """Launch (as root) a daemon with ``DaemonContext(<context_kwargs>)``.

    The launcher first takes ``LAUNCHER_GROUPS`` as its supplementary groups.
    The daemon reports to a file in ``open_dir``, writable by the new owner.
    """
    out = open_dir / "report.json"
    body = (
        f"os.setgroups({LAUNCHER_GROUPS!r})\n"
        + f"assert sorted(os.getgroups()) == {LAUNCHER_GROUPS!r}\n"
        + f"OUT = {str(out)!r}\n"
        + f"with daemonkit.DaemonContext({context_kwargs}):\n"
        + "".join(f"    {line}\n" for line in REPORT_AND_TRY_ROOT.splitlines())
    )
    launch, _ = daemons.launch(body)
    assert launch.returncode == 0, launch.stderr
    data = daemons.read_report(out)
    initial: dict[str, Any] = data["initial"]
    initial["regain"] = data["regain"]
    return initial, data["pid"]


def primary_group_name(user: pwd.struct_passwd) -> str:
    return grp.getgrgid(user.pw_gid).gr_name


@pytest.mark.parametrize(
    "how", ["names", "numbers", "uid_name_only", "uid_number_only", "uid_name_gid_number"]
)
def test_daemon_runs_as_the_target_user(daemons: Daemons, open_dir: Path, how: str) -> None:
    user = nobody()
    uid_value = {
        "names": repr(user.pw_name),
        "numbers": str(user.pw_uid),
        "uid_name_only": repr(user.pw_name),
        "uid_number_only": str(user.pw_uid),
        "uid_name_gid_number": repr(user.pw_name),
    }[how]
    gid_value = {
        "names": repr(primary_group_name(user)),
        "numbers": str(user.pw_gid),
        "uid_name_only": None,
        "uid_number_only": None,
        "uid_name_gid_number": str(user.pw_gid),
    }[how]
    kwargs = f"uid={uid_value}" + (f", gid={gid_value}" if gid_value else "")
    data, pid = launch_as(daemons, open_dir, kwargs)
    uid, gid = user.pw_uid, user.pw_gid
    assert data["resuid"] == [uid, uid, uid]
    # Without a gid, the user's primary group, not the launcher's (root's).
    assert data["resgid"] == [gid, gid, gid]
    assert data["groups"] == []
    # The kernel agrees (seen from outside the daemon).
    status = Path(f"/proc/{pid}/status").read_text()
    assert f"Uid:\t{uid}\t{uid}\t{uid}\t{uid}" in status
    assert f"Gid:\t{gid}\t{gid}\t{gid}\t{gid}" in status
    assert "CapEff:\t0000000000000000" in status
    assert stop(pid)


def test_root_cannot_be_regained(daemons: Daemons, open_dir: Path) -> None:
    data, pid = launch_as(daemons, open_dir, "uid='nobody'")
    eperm = 1
    assert data["regain"] == {
        "setuid": eperm,
        "seteuid": eperm,
        "setgid": eperm,
        "setgroups": eperm,
    }
    assert stop(pid)


def test_gid_other_than_the_primary_group(daemons: Daemons, open_dir: Path) -> None:
    user = nobody()
    other = next(
        group
        for group in grp.getgrall()
        if group.gr_gid not in (0, user.pw_gid) and user.pw_name not in group.gr_mem
    )
    data, pid = launch_as(daemons, open_dir, f"uid={user.pw_uid}, gid={other.gr_name!r}")
    assert data["resuid"] == [user.pw_uid] * 3
    assert data["resgid"] == [other.gr_gid] * 3
    assert data["groups"] == []
    assert stop(pid)


def test_gid_only_keeps_the_user(daemons: Daemons, open_dir: Path) -> None:
    """Only the group changes: the daemon stays root, in the given group."""
    user = nobody()
    data, pid = launch_as(daemons, open_dir, f"gid={user.pw_gid}")
    assert data["resuid"] == [0, 0, 0]
    assert data["resgid"] == [user.pw_gid] * 3
    assert stop(pid)


def test_initgroups_gives_the_users_groups(daemons: Daemons, open_dir: Path) -> None:
    user = user_with_supplementary_groups()
    expected = sorted(set(os.getgrouplist(user.pw_name, user.pw_gid)))
    data, pid = launch_as(daemons, open_dir, f"uid={user.pw_name!r}, initgroups=True")
    assert data["resuid"] == [user.pw_uid] * 3
    assert data["resgid"] == [user.pw_gid] * 3
    assert data["groups"] == expected
    assert data["groups"] != []
    assert stop(pid)


def test_without_initgroups_supplementary_groups_are_empty(
    daemons: Daemons, open_dir: Path
) -> None:
    user = user_with_supplementary_groups()
    data, pid = launch_as(daemons, open_dir, f"uid={user.pw_name!r}")
    assert data["resuid"] == [user.pw_uid] * 3
    assert data["groups"] == []
    assert stop(pid)


# -- chroot -----------------------------------------------------------------

# Inside the jail nothing more can be imported from outside: daemonkit must
# have imported what it uses after change_root() (resource for prevent_core,
# fcntl for a stream target among fds 0-2, traceback and what it needs to
# report an error) and resolved the groups of initgroups in the launcher.

# After chroot nothing outside can be imported; /proc is not there either, so
# the daemon reports with what it already has (os, json) instead of facts.
CHROOT_BODY = """\
JAIL, OUTSIDE = sys.argv[2], sys.argv[3]
with daemonkit.DaemonContext(chroot_directory=JAIL, working_directory="/srv"{extra}):
    data = {{
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "sees_outside": os.path.exists(OUTSIDE),
        "sees_inside": os.path.exists("/inside.txt"),
        "root_listing": sorted(os.listdir("/")),
        "resuid": list(os.getresuid()),
        "resgid": list(os.getresgid()),
    }}
    with open("/srv/report.json.tmp", "w") as out:
        json.dump(data, out)
    os.rename("/srv/report.json.tmp", "/srv/report.json")
    for _ in range(600): time.sleep(0.05)
"""


def make_jail(tmp_path: Path) -> Path:
    jail = tmp_path / "jail"
    (jail / "srv").mkdir(parents=True)
    (jail / "inside.txt").write_text("in the jail\n")
    return jail


@pytest.mark.parametrize(
    ("owner", "prevent_core"), [("root", True), ("nobody", True), ("root", False)]
)
def test_chroot(daemons: Daemons, tmp_path: Path, owner: str, prevent_core: bool) -> None:
    jail = make_jail(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("outside\n")
    extra = f", prevent_core={prevent_core}"
    if owner == "nobody":
        user = nobody()
        os.chown(jail / "srv", user.pw_uid, user.pw_gid)
        extra += f", uid={user.pw_uid}"
    launch, _ = daemons.launch(
        CHROOT_BODY.format(extra=extra), args=[str(jail), str(outside)], timeout=20
    )
    assert launch.returncode == 0, launch.stderr
    # The daemon wrote inside the jail; read it from outside.
    data = daemons.read_report(jail / "srv" / "report.json")
    pid = data["pid"]
    assert data["cwd"] == "/srv"
    assert data["sees_inside"] is True
    assert data["sees_outside"] is False
    assert data["root_listing"] == ["inside.txt", "srv"]
    # What the kernel says, from outside.
    assert os.readlink(f"/proc/{pid}/root") == str(jail)
    assert os.readlink(f"/proc/{pid}/cwd") == str(jail / "srv")
    if owner == "nobody":
        assert data["resuid"] == [nobody().pw_uid] * 3
        assert data["resgid"] == [nobody().pw_gid] * 3
    else:
        assert data["resuid"] == [0, 0, 0]
    if prevent_core:
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert any(
            line.startswith("Max core file size") and line.split()[4:6] == ["0", "0"]
            for line in limits.splitlines()
        ), limits
    assert stop(pid)


def test_chroot_with_initgroups(daemons: Daemons, tmp_path: Path) -> None:
    user = user_with_supplementary_groups()
    expected = sorted(set(os.getgrouplist(user.pw_name, user.pw_gid)))
    if len(expected) < 2:
        pytest.skip("no user with supplementary groups on this system")
    jail = make_jail(tmp_path)
    os.chown(jail / "srv", user.pw_uid, user.pw_gid)
    body = f"""\
with daemonkit.DaemonContext(
    chroot_directory={str(jail)!r}, uid={user.pw_name!r}, initgroups=True
):
    with open("/srv/report.json.tmp", "w") as out:
        json.dump({{"pid": os.getpid(), "groups": sorted(os.getgroups())}}, out)
    os.rename("/srv/report.json.tmp", "/srv/report.json")
    for _ in range(600): time.sleep(0.05)
"""
    launch, _ = daemons.launch(body, timeout=20)
    assert launch.returncode == 0, launch.stderr
    data = daemons.read_report(jail / "srv" / "report.json")
    pid = data["pid"]
    # From outside, the kernel's view of the jailed daemon's groups.
    status = Path(f"/proc/{pid}/status").read_text()
    groups_line = next(line for line in status.splitlines() if line.startswith("Groups:"))
    assert sorted(int(gid) for gid in groups_line.split()[1:]) == data["groups"]
    assert stop(pid)
    assert data["groups"] == expected


def test_error_inside_chroot_reaches_the_launcher(daemons: Daemons, tmp_path: Path) -> None:
    """Inside the jail the daemon cannot import from outside; with wait_ready
    the launcher reports that error (formatted inside the jail)."""
    jail = make_jail(tmp_path)
    body = f"""\
with daemonkit.DaemonContext(
    chroot_directory={str(jail)!r}, working_directory="/srv", wait_ready=True,
):
    import daemonkit_test_no_such_module
    daemonkit.ready()
"""
    launch, _ = daemons.launch(body, timeout=20)
    assert launch.returncode == 1
    assert "ModuleNotFoundError" in launch.stderr
    assert "daemonkit_test_no_such_module" in launch.stderr
    assert "Traceback" in launch.stderr


def test_chroot_with_stderr_to_the_launchers_stdout(daemons: Daemons, tmp_path: Path) -> None:
    """``stderr=sys.stdout`` inside a chroot: the daemon's fd 2 is the launcher's fd 1."""
    jail = make_jail(tmp_path)
    body = f"""\
with daemonkit.DaemonContext(
    chroot_directory={str(jail)!r}, stderr=sys.stdout
):
    with open("/srv/report.json", "w") as out:
        json.dump({{"pid": os.getpid()}}, out)
    os.write(2, b"written by the jailed daemon to its fd 2\\n")
"""
    # The daemon exits at once: it holds the launcher's stdout pipe until then.
    launch, _ = daemons.launch(body, timeout=20)
    assert launch.returncode == 0, launch.stderr
    daemons.read_report(jail / "srv" / "report.json")
    assert "written by the jailed daemon to its fd 2" in launch.stdout


# -- as an ordinary user -----------------------------------------------------


@pytest.mark.parametrize("kwargs", ["", "uid=UID", "uid=NAME", "gid=GID", "uid=UID, gid=GID"])
def test_non_root_daemon_without_owner_change(
    daemons: Daemons, open_dir: Path, kwargs: str
) -> None:
    """An unprivileged launcher daemonizes; naming its own user is no change."""
    user = nobody()
    kwargs = (
        kwargs.replace("UID", str(user.pw_uid))
        .replace("NAME", repr(user.pw_name))
        .replace("GID", str(user.pw_gid))
    )
    out = open_dir / "report.json"
    separator = ", " if kwargs else ""
    body = (
        drop_to_nobody()
        + f"with daemonkit.DaemonContext(working_directory={str(open_dir)!r}{separator}{kwargs}):\n"
        + f"    facts.report({str(out)!r})\n"
        + "    for _ in range(600): time.sleep(0.05)\n"
    )
    launch, _ = daemons.launch(body)
    assert launch.returncode == 0, launch.stderr
    data = daemons.read_report(out)
    assert data["resuid"] == [user.pw_uid] * 3
    assert data["resgid"] == [user.pw_gid] * 3
    assert data["groups"] == []
    assert data["cwd"] == str(open_dir)
    assert data["sid"] != data["pid"]
    assert stop(data["pid"])
    assert not is_alive(data["pid"])


def non_root_refusals() -> dict[str, tuple[str, list[str]]]:
    return {
        "uid_root": ("uid=0", ["user 0", "root"]),
        "uid_root_by_name": ("uid='root'", ["user 'root'", "root"]),
        "another_user": ("uid=OTHER_UID", ["user OTHER_UID"]),
        "gid_root": ("gid=0", ["group 0"]),
        "chroot": ("chroot_directory=JAIL", ["chroot", "JAIL"]),
    }


@pytest.mark.parametrize("case", sorted(non_root_refusals()))
def test_non_root_owner_change_refused_before_fork(
    daemons: Daemons, open_dir: Path, case: str
) -> None:
    kwargs, fragments = non_root_refusals()[case]
    jail = open_dir / "jail"
    jail.mkdir()
    me = nobody()
    other = next(user.pw_uid for user in pwd.getpwall() if user.pw_uid not in (0, me.pw_uid))

    def fill(text: str) -> str:
        return text.replace("OTHER_UID", str(other)).replace("JAIL", str(jail))

    kwargs = fill(kwargs.replace("JAIL", repr(str(jail))))
    data = expect_refused(
        daemons,
        f"{kwargs}, working_directory={str(open_dir)!r}, stdout={str(open_dir / 'out.log')!r}",
        open_dir / "report.json",
        setup=drop_to_nobody(),
    )
    assert data["type"] == "PrivilegeError", data["message"]
    assert "DaemonOSEnvironmentError" in data["mro"]
    assert "OSError" in data["mro"]
    assert data["errno"] == 1  # EPERM
    for fragment in fragments:
        assert fill(fragment) in data["message"]
    assert "needs root" in data["message"]
    assert not (open_dir / "out.log").exists()
    (open_dir / "report.json").unlink()
    assert sorted(path.name for path in open_dir.iterdir()) == ["jail"]
