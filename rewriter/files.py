"""Writing output files so that nobody ever sees half of one."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from .errors import OutputError


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
            write(handle)
        if overwrite:
            os.replace(tmp, output)
        else:
            _link_exclusively(tmp, output)
    except FileExistsError as exc:
        raise OutputError(f"output '{output}' already exists", fix="pass --force (overwrite=True) to replace it") \
            from exc
    except OSError as exc:
        raise OutputError(f"cannot write '{output}': {exc.strerror or exc}", fix="check the path and free space") \
            from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def _link_exclusively(tmp: str, output: Path) -> None:
    try:
        os.link(tmp, output)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        # A filesystem without hard links: claim the name exclusively, then move into it.
        os.close(os.open(output, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        os.replace(tmp, output)
