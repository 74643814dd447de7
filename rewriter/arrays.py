"""Arrays from ``.npy`` and ``.npz`` files, read as data only and within a size bound.

NumPy's own reader allocates what a file's header declares before it reads the data, so a
60-byte ``.npy`` can ask for terabytes, and a compressed ``.npz`` member can inflate without
bound. Each array's declared size is checked against the bytes really there (a stored
member, a plain file) or against the bound (a compressed member) before it is read, and
nothing is ever unpickled.
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import InputError
from .files import opened_input

MAX_ARRAY_BYTES = 1 << 32  # per file: 4 GiB of rows is more than one machine explains
_FIX = "save the rows with numpy.save (one array) or numpy.savez (arrays by input name)"


def _declared_bytes(handle: BinaryIO, origin: str) -> int:
    """The size the array header at ``handle`` declares; leaves ``handle`` at the data."""
    try:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(handle)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise InputError(f"'{origin}' is not a plain .npy array ({exc})", fix=_FIX) from exc
    if dtype.hasobject:
        raise InputError(f"'{origin}' holds Python objects, not plain arrays (nothing is ever unpickled)", fix=_FIX)
    return math.prod(shape) * dtype.itemsize


def _read_npy(handle: BinaryIO, origin: str, available: int) -> np.ndarray:
    start = handle.tell()
    declared = _declared_bytes(handle, origin)
    if declared > available - (handle.tell() - start):
        raise InputError(f"'{origin}' declares {declared:,} bytes of data but holds fewer", fix=_FIX)
    handle.seek(start)
    try:
        return np.load(handle, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"'{origin}' is not a plain .npy array ({exc})", fix=_FIX) from exc


def read_arrays(path: str | os.PathLike, limit: int = MAX_ARRAY_BYTES) -> dict[str, np.ndarray]:
    """The arrays of a ``.npy`` (named after the file's stem) or ``.npz`` file, by name in the
    file's order. Raises :class:`InputError` for anything else: a missing or special file,
    a pickle, a header that declares more than the file holds, more than ``limit`` bytes."""
    path = Path(path)
    with opened_input(path, "array file") as handle:
        size = os.fstat(handle.fileno()).st_size
        if not zipfile.is_zipfile(handle):
            handle.seek(0)
            return {path.stem: _read_npy(handle, str(path), min(size, limit))}
        handle.seek(0)
        return _read_npz(handle, path, limit)


def _read_npz(handle: BinaryIO, path: Path, limit: int) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(handle)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"'{path}' is not a .npz archive ({exc})", fix=_FIX) from exc
    arrays: dict[str, np.ndarray] = {}
    total = 0
    with archive:
        for member in archive.infolist():
            name = member.filename.removesuffix(".npy")
            total += member.file_size
            if total > limit:
                raise InputError(f"'{path}' holds more than {limit / 2**30:g} GiB of arrays", fix=_FIX)
            try:
                with archive.open(member) as data:
                    arrays[name] = _read_npy(data, f"{path}:{name}", member.file_size)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:  # CRC mismatch, a cut archive
                raise InputError(f"'{path}' is damaged at '{name}' ({exc})", fix=_FIX) from exc
    return arrays
