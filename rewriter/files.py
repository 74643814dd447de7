"""Files in and out: inputs read only when they are regular files of a bounded size, and
outputs written so that nobody ever sees half of one."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import InputError, OutputError


@contextlib.contextmanager
def opened_input(path: str | os.PathLike, what: str = "input", limit: int | None = None) -> Iterator[BinaryIO]:
    """``path`` opened for reading, when it is a regular file (a symbolic link to one counts)
    of at most ``limit`` bytes; anything else is an :class:`InputError` before a byte is read.

    A FIFO would block the reader forever and ``/dev/zero`` never ends, so the type is
    checked on the opened descriptor (opened without blocking), not on the name, which
    another process could swap in between.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError as exc:
        raise InputError(f"{what} '{path}' does not exist", fix="check the path") from exc
    except IsADirectoryError as exc:
        raise InputError(f"{what} '{path}' is a directory, not a file", fix="pass the file itself") from exc
    except OSError as exc:
        raise InputError(f"cannot read {what} '{path}': {exc.strerror or exc}",
                         fix="check the path and the file's permissions") from exc
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise InputError(f"{what} '{path}' is a directory, not a file", fix="pass the file itself")
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{what} '{path}' is not a regular file (a pipe, a device or a socket)",
                             fix="save the data to a regular file first and pass that")
        if limit is not None and info.st_size > limit:
            raise InputError(f"{what} '{path}' is {info.st_size / 2**20:,.0f} MiB, more than the "
                             f"{limit / 2**20:,.0f} MiB allowed", fix="check that this is the right file")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


def read_input(path: str | os.PathLike, what: str = "input", limit: int | None = None) -> bytes:
    """The bytes of a regular file (see :func:`opened_input`), at most its size at opening."""
    with opened_input(path, what, limit) as handle:
        size = os.fstat(handle.fileno()).st_size
        try:
            return handle.read(size)
        except OSError as exc:
            raise InputError(f"cannot read {what} '{path}': {exc.strerror or exc}",
                             fix="check the file's permissions") from exc


def check_output_path(output: str | os.PathLike, force: bool) -> None:
    """Refuse, before any work, an output path that cannot be written: a directory, an
    existing file without ``force``, a missing or read-only directory."""
    output = Path(output)
    if output.is_dir():
        raise OutputError(f"output '{output}' is a directory", fix="give a file path such as model.pt")
    if output.exists() and not force:
        raise OutputError(f"output '{output}' already exists", fix="pass --force to overwrite it")
    if not output.parent.is_dir():
        raise OutputError(f"the output directory '{output.parent}' does not exist", fix="create it first")
    if not os.access(output.parent, os.W_OK):
        raise OutputError(f"the output directory '{output.parent}' is not writable",
                          fix="choose a writable directory")


def write_atomically(write: Callable[[BinaryIO], object], output: str | os.PathLike, *,
                     overwrite: bool = True) -> None:
    """Write through ``write(handle)`` to a temporary file beside ``output``, then move it into
    place: readers never see half a file, and a failure (or a signal) leaves nothing behind.

    Without ``overwrite`` the output is created exclusively (a hard link of the finished
    file), so of two writers racing for one path exactly one succeeds and the other gets
    :class:`OutputError`.
    """
    output = Path(output)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    except OSError as exc:
        raise OutputError(f"cannot write in '{output.parent}': {exc.strerror or exc}",
                          fix="choose an existing, writable directory") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            _write_reporting_space(write, handle, output)
        if overwrite:
            os.replace(tmp, output)
        else:
            _link_exclusively(tmp, output)
    except FileExistsError as exc:
        raise OutputError(f"output '{output}' already exists", fix="pass --force (overwrite=True) to replace it") \
            from exc
    except OSError as exc:
        fix = "free space on that file system, or write elsewhere" if exc.errno in (errno.ENOSPC, errno.EDQUOT) \
            else "check the path and free space"
        raise OutputError(f"cannot write '{output}': {exc.strerror or exc}", fix=fix) from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def _write_reporting_space(write: Callable[[BinaryIO], object], handle: BinaryIO, output: Path) -> None:
    """``write(handle)``; a failure of the disk under it is an ``OSError`` with its errno.
    Writers in C++ (``torch.save``) report a short write as a ``RuntimeError`` of their own
    ("unexpected pos"), numpy as an ``OSError`` without an errno: the free space and the file
    size limit tell what happened."""
    try:
        write(handle)
        handle.flush()
    except (RuntimeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        code = _space_exhausted(handle)  # numpy reports "N requested and M written", without an errno
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(output)) from exc


def _space_exhausted(handle: BinaryIO) -> int | None:
    """``ENOSPC`` when the file system holding ``handle`` has no room for a few more blocks,
    ``EFBIG`` when the process may not grow the file further, else None."""
    import resource

    try:
        info = os.fstatvfs(handle.fileno())
        size = os.fstat(handle.fileno()).st_size
    except OSError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft != resource.RLIM_INFINITY and size + info.f_bsize >= soft:
        return errno.EFBIG
    return errno.ENOSPC if info.f_bavail * info.f_frsize < 4 * info.f_bsize else None


def _link_exclusively(tmp: str, output: Path) -> None:
    try:
        os.link(tmp, output)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # A filesystem without hard links: claim the name exclusively, then move into it.
        os.close(os.open(output, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(tmp, output)
