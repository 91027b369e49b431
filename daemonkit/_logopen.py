"""Opening a stream or log file path without being steered by another user.

The launcher usually runs as root and opens ``stdout``/``stderr`` paths
before it drops privileges, so a path under a directory someone else can
write to is an attack surface: a symlink or hard link planted there would
make root append to (or create) any file on the system. Hence the rules:

- a directory writable by everyone without the sticky bit is refused
  (anyone could swap the file under us);
- a symbolic link is followed only if root or we own it, and so is every
  link after it in a chain (an administrator's ``/var/log/app.log ->
  /data/app.log`` is fine; a link someone else planted is not): the
  kernel's ``protected_symlinks`` rule, extended to every directory;
- a log file to append to that has several hard links, or that another
  user owns in a directory everyone may write to (the kernel's
  ``protected_regular``), is refused; one that everyone may write gets a
  warning; a file is never created writable by everyone, whatever the umask;
- only regular files, character devices (``/dev/null``, a console) and
  fifos (for writing, one that already has a reader) are accepted; opening
  never blocks.

Only ``stat``, ``open`` and ``fstat`` are used, so that the same check can run
when a log file is reopened from a signal handler.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_LINKS = 40  # as the kernel's limit on a chain of symbolic links


class UnsafePath(ValueError):
    """A path the rules above refuse; the message says why and what to do."""


def check_directory(path: str) -> None:
    """Refuse ``path`` if its directory is writable by everyone without the sticky bit."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        status = os.stat(directory)
    except OSError:
        return  # opening the path reports it, with the right hint
    if status.st_mode & stat.S_IWOTH and not status.st_mode & stat.S_ISVTX:
        raise UnsafePath(
            f"its directory {directory} is writable by everyone without the sticky "
            "bit, so anyone could replace the file; use a directory only its owner "
            "can write to, such as /var/log/NAME"
        )


def _final_path(path: str) -> str:
    """Where ``path`` leads: its chain of symbolic links followed, each one checked.

    Every link must belong to root or to us, and every directory on the way
    must pass :func:`check_directory`. The final path (which may not exist
    yet) is then opened with ``O_NOFOLLOW``, so a link put there meanwhile
    makes the open fail rather than be followed unchecked.
    """
    current = path
    for _ in range(MAX_LINKS):
        check_directory(current)
        try:
            status = os.lstat(current)
        except FileNotFoundError:
            return current
        if not stat.S_ISLNK(status.st_mode):
            return current
        if status.st_uid not in (0, os.geteuid()):
            shown = os.path.normpath(current)  # for the message only: ".." may cross a link
            where = "it" if current == path else f"{shown}, on its way,"
            raise UnsafePath(
                f"{where} is a symbolic link owned by uid {status.st_uid}, neither root "
                "nor us, so it is not followed; remove it, or give the path it points to"
            )
        current = os.path.join(os.path.dirname(current), os.readlink(current))
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)


def open_log(path: str, flags: int, mode: int = 0o664) -> tuple[int, bool, str]:
    """Open ``path`` with ``flags`` under the rules above: ``(fd, created, warning)``.

    ``warning`` is empty, or says why the file deserves a look (it is
    writable by everyone) without making it unusable. Raises
    :class:`UnsafePath` for a path the rules refuse, and ``OSError`` when
    the open itself fails (``ENXIO``: a fifo nobody reads, a terminal that
    is not there).
    """
    writing = bool(flags & (os.O_WRONLY | os.O_RDWR))
    final = _final_path(path)
    flags |= os.O_NONBLOCK | os.O_NOFOLLOW
    mode &= ~stat.S_IWOTH  # never created writable by everyone
    created = False
    if flags & os.O_CREAT:
        try:
            fd = os.open(final, flags | os.O_EXCL, mode)
            created = True
        except FileExistsError:
            fd = os.open(final, flags, mode)
    else:
        fd = os.open(final, flags)
    try:
        status = os.fstat(fd)
        warning = ""
        if stat.S_ISREG(status.st_mode):
            if writing and not created:
                _check_existing(final, status)
                if status.st_mode & stat.S_IWOTH:
                    warning = (
                        f"it is writable by everyone (mode {stat.S_IMODE(status.st_mode):04o}), "
                        "so anyone could forge or erase its lines; chmod o-w it"
                    )
        elif stat.S_ISFIFO(status.st_mode) and not writing:
            # Read a fifo with a writer of our own: its reads wait for data
            # instead of seeing end of file whenever no one else writes.
            os.close(fd)
            fd = os.open(final, (flags & ~os.O_ACCMODE & ~os.O_CREAT) | os.O_RDWR)
        elif not (stat.S_ISCHR(status.st_mode) or stat.S_ISFIFO(status.st_mode)):
            raise UnsafePath("it is neither a regular file, a device nor a fifo")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, created, warning


def _check_existing(path: str, status: os.stat_result) -> None:
    """Refuse an existing file to append to that may be another in disguise."""
    if status.st_nlink > 1:
        raise UnsafePath(
            f"it has {status.st_nlink} hard links, so it may be another file "
            "in disguise; give a file of its own"
        )
    if status.st_uid not in (0, os.geteuid()):
        directory = os.stat(os.path.dirname(os.path.abspath(path)))
        if directory.st_mode & stat.S_IWOTH:  # sticky: else check_directory refused it
            raise UnsafePath(
                f"it belongs to uid {status.st_uid} in a directory everyone may write "
                "to, so anyone could have made it; remove it, or use a private directory"
            )
