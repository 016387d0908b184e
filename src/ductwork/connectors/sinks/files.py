"""File sinks: Parquet or CSV written atomically, partition sets swapped in whole, uploads.

A table is written to a temporary file beside the target, fsynced and renamed over it, so a
reader sees the old file or the new one, never half of one. A partitioned (Hive layout) set is
written to a temporary directory and swapped in with one ``renameat2(RENAME_EXCHANGE)`` where the
OS has it (two renames otherwise); the old set is removed only after the new one is in place.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from ductwork.connectors.sinks._common import Compression, FileFormat
from ductwork.core.fingerprint import file_digest
from ductwork.errors import DataError, SourceError


@dataclass
class FileResult:
    files: dict[str, str]  # relative path -> sha256
    partitions: list[str] = field(default_factory=list)


def is_remote(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://``, ``memory://``, ...) rather than a local path."""
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", path)) and not path.startswith("file://")


def _fsync(path: Path, *, directory: bool = False) -> None:
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if directory:  # some platforms cannot open directories; the data is fsynced already
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sink(
    lf: pl.LazyFrame, dest: Path | pl.PartitionBy, fmt: FileFormat, compression: Compression
) -> None:
    try:
        if fmt == "parquet":
            lf.sink_parquet(dest, compression=compression)
        else:
            lf.sink_csv(dest)
    except pl.exceptions.PolarsError as exc:
        text = str(exc).strip().splitlines()[0]
        msg = f"cannot write the table as {fmt}: {text}"
        hint = "CSV holds flat columns only: drop or stringify list/struct columns first."
        raise DataError(msg, hint=hint if fmt == "csv" else None) from None


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): file_digest(p)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_file(
    lf: pl.LazyFrame, target: Path, fmt: FileFormat, compression: Compression
) -> FileResult:
    """Write one file atomically: temp file beside it, fsync, rename over the target."""
    if target.is_dir():
        msg = f"'{target}' is a directory; give a file path, or use partition_by"
        raise DataError(msg)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.dw-tmp-{uuid.uuid4().hex[:12]}")
    try:
        _sink(lf, tmp, fmt, compression)
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(target.parent, directory=True)
    return FileResult(files={target.name: file_digest(target)})


_PARTITION_DIR = re.compile(r"^[^=/]+=[^/]*$")


def _check_replaceable(target: Path) -> None:
    """Refuse to replace a directory that holds anything but a partition set."""
    if not target.exists():
        return
    if not target.is_dir():
        msg = f"'{target}' is a file; partition_by writes a directory of partitions"
        raise DataError(msg)
    for entry in target.iterdir():
        if entry.name.startswith((".", "_")):
            continue
        if not (entry.is_dir() and _PARTITION_DIR.match(entry.name)):
            msg = (
                f"refusing to replace directory '{target}': it holds '{entry.name}', which is "
                "not a partition (col=value) directory"
            )
            raise DataError(msg, hint="Point `path` at a directory used only for this load.")


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False when unsupported."""
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(a))


def swap_in_dir(new: Path, target: Path) -> None:
    """Put the complete directory ``new`` at ``target``; remove the old one afterwards."""
    if not target.exists():
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new)  # now holds the old set
    else:  # two renames: for a moment `target` is missing, never half-written
        old = target.with_name(f".{target.name}.dw-old-{uuid.uuid4().hex[:12]}")
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old)
    _fsync(target.parent, directory=True)


def write_partitioned(
    lf: pl.LazyFrame,
    target: Path,
    fmt: FileFormat,
    partition_by: Sequence[str],
    compression: Compression,
) -> FileResult:
    """Write a Hive-layout partition set to a temp directory, then swap it in as a whole."""
    _check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    new = target.with_name(f".{target.name}.dw-new-{uuid.uuid4().hex[:12]}")
    try:
        _sink(lf, pl.PartitionBy(new, key=list(partition_by)), fmt, compression)
        new.mkdir(exist_ok=True)  # an empty input writes no partition
        for p in new.rglob("*"):
            _fsync(p, directory=p.is_dir())
        _fsync(new, directory=True)
        swap_in_dir(new, target)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    files = _digests(target)
    partitions = sorted({str(Path(f).parent.as_posix()) for f in files})
    return FileResult(files=files, partitions=partitions)


def upload(local: Path, remote: str, *, partitioned: bool) -> None:
    """Copy a written file (or partition set) to an fsspec URL.

    Object stores make each single upload visible whole; for a partition set the new files are
    uploaded first and stale files of the old set deleted afterwards.
    """
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(remote)
        if not partitioned:
            parent = root.rsplit("/", 1)[0] if "/" in root else ""
            if parent:
                fs.makedirs(parent, exist_ok=True)
            fs.put_file(str(local), root)
            return
        new = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
        for rel in sorted(new):
            dest = f"{root.rstrip('/')}/{rel}"
            fs.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            fs.put_file(str(local / rel), dest)
        prefix = root.rstrip("/") + "/"
        old = fs.find(root) if fs.exists(root) else []
        for path in old:
            rel = path[len(prefix) :] if path.startswith(prefix) else path
            if rel not in new:
                fs.rm_file(path)
    except ImportError as exc:
        msg = f"writing to '{remote}' needs an fsspec backend that is not installed: {exc}"
        raise SourceError(msg) from None
    except OSError as exc:
        msg = f"cannot write to '{remote}': {exc}"
        raise SourceError(msg) from None
