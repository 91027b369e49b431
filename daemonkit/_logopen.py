"""Opening a stream or log file path without being steered by another user.

The launcher usually runs as root and opens ``stdout``/``stderr`` paths
before it drops privileges, so a path under a directory someone else can
write to is an attack surface: a symlink or hard link planted there would
make root append to (or create) any file on the system. Hence the rules:

- a directory writable by everyone without the sticky bit is refused
  (anyone could swap the file under us);
- a symbolic link is followed only if root or we own it (an administrator's
  ``/var/log/app.log -> /data/app.log`` is fine; a link someone else planted
  is not), which is the kernel's ``protected_symlinks`` rule extended to
  every directory;
- an existing regular file with several hard links, or that everyone may
  write, is refused; a file is never created writable by everyone, whatever
  the umask;
- only regular files, character devices (``/dev/null``, a console) and
  fifos that already have a reader are accepted; opening never blocks.

Only ``stat``, ``open`` and ``fstat`` are used, so that the same check can run
when a log file is reopened from a signal handler.
"""

from __future__ import annotations

import errno
import os
import stat


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


def _follow(path: str, flags: int, mode: int) -> int:
    """Open ``path``, a symbolic link, if root or this process's user owns the link."""
    link = os.lstat(path)
    if not stat.S_ISLNK(link.st_mode):
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
    if link.st_uid not in (0, os.geteuid()):
        raise UnsafePath(
            f"it is a symbolic link owned by uid {link.st_uid}, neither root nor us, "
            "so it is not followed; remove it, or give the path it points to"
        )
    return os.open(path, flags, mode)


def open_log(path: str, flags: int, mode: int = 0o664) -> tuple[int, bool]:
    """Open ``path`` with ``flags`` under the rules above: ``(fd, created)``.

    Raises :class:`UnsafePath` for a path the rules refuse, and ``OSError``
    when the open itself fails (``ENXIO``: a fifo nobody reads).
    """
    check_directory(path)
    mode &= ~stat.S_IWOTH
    flags |= os.O_NONBLOCK
    created = False
    try:
        if flags & os.O_CREAT:
            try:
                fd = os.open(path, flags | os.O_EXCL | os.O_NOFOLLOW, mode)
                created = True
            except FileExistsError:
                fd = os.open(path, flags | os.O_NOFOLLOW, mode)
        else:
            fd = os.open(path, flags | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        fd = _follow(path, flags, mode)
    try:
        status = os.fstat(fd)
        if stat.S_ISREG(status.st_mode):
            if status.st_nlink > 1 and not created:
                raise UnsafePath(
                    f"it has {status.st_nlink} hard links, so it may be another file "
                    "in disguise; give a file of its own"
                )
            if status.st_mode & stat.S_IWOTH:
                raise UnsafePath(
                    f"it is writable by everyone (mode {stat.S_IMODE(status.st_mode):04o}), "
                    "so anyone could forge or erase its lines; chmod o-w it"
                )
        elif not (stat.S_ISCHR(status.st_mode) or stat.S_ISFIFO(status.st_mode)):
            raise UnsafePath("it is neither a regular file, a device nor a fifo")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, created
