"""Opening a pidfile safely: the checks that keep another user from steering it.

A pidfile lives in a directory a service manager or an administrator made;
daemonkit refuses one that anyone could swap under it (world-writable without
the sticky bit), a symlink, a non-regular file, a file with several hard links
or one owned by another user, and names the problem and the fix in the error.
"""

from __future__ import annotations

import errno
import os
import stat

from ._lazy import errors


def same_file(path: str, fd: int) -> bool:
    """True if ``path`` (not followed if a symlink) is the file open on ``fd``."""
    try:
        on_disk = os.stat(path, follow_symlinks=False)
        held = os.fstat(fd)
    except OSError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)


def error(path: str, action: str, exc: OSError) -> errors.PIDFileError:
    """A :class:`~daemonkit.PIDFileError` naming the file, the failure and what to do."""
    advice = {
        errno.ENOENT: "create the directory first",
        errno.EACCES: "run as a user that may write there, or choose another path",
        errno.EPERM: "run as a user that may write there, or choose another path",
        errno.EROFS: "the filesystem is read-only; choose a path on a writable one",
        errno.ENOSPC: "the filesystem is full; free some space",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.ELOOP: "it is a symbolic link, which is refused; remove it",
        errno.EISDIR: "it is a directory; give a file path",
    }.get(exc.errno or 0, "choose another path")
    what = action if action.endswith(":") else f"{action} it:"
    return errors.PIDFileError(f"pidfile {path}: {what} {exc.strerror} ({advice})")


def check_directory(path: str) -> None:
    """Refuse a directory that is missing, not one, or world-writable without sticky bit."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(directory)
    except OSError as exc:
        raise error(path, f"its directory {directory} is unusable:", exc) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise errors.PIDFileError(f"pidfile {path}: {directory} is not a directory")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise errors.PIDFileError(
            f"pidfile {path}: directory {directory} is writable by everyone without "
            "the sticky bit, so anyone could replace the pidfile; use a private "
            "directory such as /run/NAME"
        )


def _open_or_create(path: str, flags: int, mode: int) -> tuple[int, bool]:
    while True:
        try:
            return os.open(path, flags | os.O_CREAT | os.O_EXCL, mode), True
        except FileExistsError:
            try:
                return os.open(path, flags), False
            except FileNotFoundError:
                continue  # removed in between: create it
            except OSError as exc:
                raise error(path, "cannot open", exc) from exc
        except OSError as exc:
            raise error(path, "cannot create", exc) from exc


def _problem(st: os.stat_result) -> str | None:
    """Why the opened file ``st`` must not be used as a pidfile, if it must not."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file; remove it or choose another path"
    if st.st_nlink != 1:
        return f"has {st.st_nlink} hard links, which is refused; remove it"
    if st.st_uid not in (os.geteuid(), 0):
        return f"is owned by uid {st.st_uid}, not by us; remove it"
    if st.st_mode & stat.S_IWOTH:
        return (
            f"is writable by everyone (mode {stat.S_IMODE(st.st_mode):04o}), so anyone "
            "could put any pid in it; remove it if nothing runs, or chmod o-w it"
        )
    return None


def open_pidfile(path: str, flags: int, mode: int) -> tuple[int, bool]:
    """Open (creating if needed) the pidfile, refusing anything unsafe.

    Returns the descriptor and whether this call created the file. Refused:
    symlinks (``O_NOFOLLOW`` in ``flags``), non-regular files, hard links,
    files owned by another user and files everyone may write; a file created
    here is removed again then. A file removed as it was opened (a ``stop``
    cleaning up a stale one, even one just created here) is opened afresh.
    """
    while True:
        fd, created = _open_or_create(path, flags, mode)
        try:
            st = os.fstat(fd)
            removed = st.st_nlink == 0
            problem = None if removed else _problem(st)
            if problem:
                raise errors.PIDFileError(f"pidfile {path} {problem}")
            if created and not removed:
                os.fchmod(fd, mode)
        except BaseException:
            os.close(fd)
            if created:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise
        if not removed:
            return fd, created
        os.close(fd)
