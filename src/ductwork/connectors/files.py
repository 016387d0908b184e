"""Read csv, tsv, parquet, json and ndjson files (one file, a glob or a directory) into a table.

Local paths go through ``ctx.resolve_path``; any other URL (``s3://``, ``memory://`` ...) is
listed and copied into the stage's temp dir with fsspec, then read like a local file, so every
check below behaves the same wherever the data lives. Polars' lazy scanners do the reading; the
checks that Polars would only hit (or silently skip) while sinking run here, eagerly, so that a
malformed file fails inside the stage with a message naming the file, line and column:

* empty (0-byte) files, invalid bytes for the declared ``encoding`` (byte offset + line),
* CSV: ragged rows (too many or too few fields), duplicate or differing headers, blank lines
  inside the data (trailing blank lines are dropped; Polars would read them as rows of nulls),
* Parquet: truncated or non-Parquet files, duplicate column names, files whose columns differ,
* JSON / NDJSON: syntax errors (line and column), records that are not objects.
"""

from __future__ import annotations

import codecs
import glob
import io
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import polars as pl

from ductwork.core.contract import StageContext
from ductwork.core.fingerprint import paths_digest, sha256_text
from ductwork.errors import DataError, DuctworkError, SourceError, UsageError

FileFormat = Literal["csv", "tsv", "parquet", "json", "ndjson"]
FILE_COLUMN = "__ductwork_file__"
"""Internal column naming each row's source file (kept only as ``include_file_paths``)."""

_SUFFIXES: dict[str, FileFormat] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".json": "json",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}
_CHUNK = 1 << 20
_BLANK = re.compile(rb"\n\r?\n")
_LOCAL_SCHEMES = ("file://",)


def format_from_path(path: str) -> FileFormat | None:
    """The format named by a path's suffix (``data/*.csv`` -> csv), if any."""
    name = path.rstrip("/").rsplit("/", 1)[-1].lower()
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    return None


def normalise_encoding(name: str) -> str:
    """'utf8' (also utf-8, utf-8-sig), 'utf8-lossy', or a Python codec name such as 'cp1252'."""
    key = name.strip().lower().replace("_", "-")
    if key in ("utf8-lossy", "utf-8-lossy"):
        return "utf8-lossy"
    try:
        codec = codecs.lookup(key).name
    except LookupError:
        msg = f"unknown encoding '{name}' (use utf8, utf8-lossy, latin1, cp1252, utf-16, ...)"
        raise ValueError(msg) from None
    return "utf8" if codec in ("utf-8", "utf-8-sig") else codec


@dataclass(frozen=True)
class FileOptions:
    """What to read and how; built by the extract stage from its params."""

    path: str
    format: FileFormat
    encoding: str = "utf8"
    separator: str = ","
    has_header: bool = True
    null_values: Sequence[str] | None = None
    skip_rows: int = 0
    quote_char: str | None = '"'
    infer_schema_length: int | None = None
    records_path: str | None = None
    text_columns: frozenset[str] = frozenset()  # read as String; the schema converts them


@dataclass
class Loaded:
    """A lazily readable table, plus what the stage needs to explain a failure."""

    frame: pl.LazyFrame
    where: str
    files: list[str] = field(default_factory=list)
    diagnose: Callable[[Exception], DuctworkError | None] = lambda exc: None


@dataclass(frozen=True)
class SourceFile:
    shown: str  # as users know it: project-relative path or URL
    local: Path  # where it can be read now


# --- locating files ---------------------------------------------------------------------------


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith(_LOCAL_SCHEMES)


def _has_magic(path: str) -> bool:
    return glob.has_magic(path)


def _shown(p: Path, ctx: StageContext) -> str:
    root = ctx.project_dir.resolve()
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else p.as_posix()


def _local_matches(opts: FileOptions, ctx: StageContext) -> list[Path]:
    raw = opts.path.removeprefix("file://")
    full = ctx.resolve_path(raw, what="path")
    pattern = str(full)
    if not _has_magic(raw) and full.is_dir():
        pattern = str(full / "**" / f"*{_ext(opts.format)}")
    elif not _has_magic(raw):
        if not full.exists():
            msg = f"stage '{ctx.stage}': file not found: {opts.path} (looked for {full})"
            raise DataError(msg, hint="Check the path; it is relative to the project directory.")
        return [full]
    found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not found:
        msg = f"stage '{ctx.stage}': no files match '{opts.path}' (pattern {pattern})"
        raise DataError(msg, hint="Check the pattern and that the files are there.")
    return found


def _ext(fmt: FileFormat) -> str:
    return {"csv": ".csv", "tsv": ".tsv", "parquet": ".parquet", "json": ".json"}.get(
        fmt, ".ndjson"
    )


def _remote_fs(url: str) -> tuple[Any, list[str]]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except ImportError as exc:
        msg = f"reading '{url.split('://', 1)[0]}://' URLs needs an fsspec backend: {exc}"
        raise UsageError(msg) from None
    try:
        if _has_magic(path):
            names = sorted(fs.glob(path))
        elif fs.isdir(path):
            names = sorted(fs.glob(path.rstrip("/") + "/**"))
        else:
            names = [path] if fs.exists(path) else []
        names = [n for n in names if fs.isfile(n)]
    except OSError as exc:
        msg = f"cannot list {url}: {exc}"
        raise SourceError(msg) from None
    if not names:
        msg = f"no files match '{url}'"
        raise DataError(msg, hint="Check the URL and that the files are there.")
    return fs, names


def _remote_url(fs: Any, name: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{protocol}://{name.lstrip('/')}" if protocol != "file" else name


def match_files(opts: FileOptions, ctx: StageContext) -> list[SourceFile]:
    """The files to read; remote files are copied into ``ctx.tmp_dir`` first."""
    if not _is_remote(opts.path):
        return [SourceFile(_shown(p, ctx), p) for p in _local_matches(opts, ctx)]
    fs, names = _remote_fs(opts.path)
    target = ctx.tmp_dir / f"extract-{ctx.stage}"
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for i, name in enumerate(names):
        local = target / f"{i:05d}-{Path(name).name}"
        try:
            fs.get_file(name, str(local))
        except OSError as exc:
            msg = f"stage '{ctx.stage}': cannot download {_remote_url(fs, name)}: {exc}"
            raise SourceError(msg) from None
        out.append(SourceFile(_remote_url(fs, name), local))
    return out


def files_stamp(opts: FileOptions, ctx: StageContext) -> str | None:
    """Content digest of the matched files (remote: their fsspec keys); None if unknowable."""
    try:
        if not _is_remote(opts.path):
            return paths_digest(_local_matches(opts, ctx))
        fs, names = _remote_fs(opts.path)
        return sha256_text("\n".join(f"{n}\0{fs.ukey(n)}" for n in names))
    except (DuctworkError, OSError, NotImplementedError):
        return None  # the run itself reports why


# --- byte-level checks ------------------------------------------------------------------------


def _check_not_empty(f: SourceFile, ctx: StageContext) -> None:
    if f.local.stat().st_size == 0:
        msg = f"stage '{ctx.stage}': {f.shown} is empty (0 bytes)"
        raise DataError(msg, hint="A file needs at least a header line (csv) or one record.")


def _decode(
    f: SourceFile, encoding: str, ctx: StageContext, out: io.TextIOBase | None = None
) -> tuple[bool, int]:
    """Decode a file in chunks (writing UTF-8 without a BOM to ``out``).

    Raises a DataError at the first byte that is invalid in ``encoding``, naming its offset and
    line. Returns (a blank line sits inside the data, number of trailing blank lines): Polars
    reads blank lines as rows of nulls, so the CSV reader drops trailing ones and reports others.
    """
    codec = "utf-8" if encoding == "utf8" else encoding
    dec = codecs.getincrementaldecoder(codec)(errors="strict")
    offset, lines, first_blank, prev, tail = 0, 0, -1, b"", b""
    with f.local.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            pending = dec.getstate()[0]
            try:
                text = dec.decode(chunk)
            except UnicodeDecodeError as exc:
                raise _decode_error(f, encoding, exc, offset - len(pending), lines, ctx) from None
            lines += text.count("\n")
            if first_blank < 0 and (m := _BLANK.search(prev + chunk)):
                first_blank = offset - len(prev) + m.start()
            if out is not None:
                out.write(text.removeprefix("\ufeff") if offset == 0 else text)
            prev, tail = chunk[-2:], (tail + chunk)[-4096:]
            offset += len(chunk)
        try:
            text = dec.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            pending = dec.getstate()[0]
            raise _decode_error(f, encoding, exc, offset - len(pending), lines, ctx) from None
        if out is not None:
            out.write(text)
    ending = tail[len(tail.rstrip(b"\r\n")) :]
    trailing = max(ending.count(b"\n") - 1, 0)
    return 0 <= first_blank < offset - len(ending), trailing


def _decode_error(
    f: SourceFile,
    encoding: str,
    exc: UnicodeDecodeError,
    base: int,
    lines: int,
    ctx: StageContext,
) -> DataError:
    data = exc.object if isinstance(exc.object, bytes) else bytes(exc.object)
    at = base + exc.start
    line = lines + data[: exc.start].count(b"\n") + 1
    bad = data[exc.start : exc.start + 1].hex()
    name = "UTF-8" if encoding == "utf8" else encoding
    msg = (
        f"stage '{ctx.stage}': {f.shown} is not valid {name}: byte 0x{bad} at offset {at} "
        f"(line {line}) {exc.reason}"
    )
    hint = (
        "Set `encoding: utf8-lossy` to replace bad bytes, or `encoding: latin1` "
        "(`cp1252` for files saved on Windows) if the file is not UTF-8."
        if encoding == "utf8"
        else "Check the file's encoding (utf8, latin1, cp1252, utf-16 ...)."
    )
    return DataError(msg, hint=hint)


def prepare_text(
    files: list[SourceFile], encoding: str, ctx: StageContext, *, strip_bom: bool
) -> tuple[list[SourceFile], list[tuple[bool, int]]]:
    """Check (utf8) or transcode to UTF-8 (other encodings); return files + blank-line counts."""
    out, counts = [], []
    target = ctx.tmp_dir / f"extract-{ctx.stage}-utf8"
    for i, f in enumerate(files):
        _check_not_empty(f, ctx)
        if encoding == "utf8-lossy":
            counts.append((False, 0))
            out.append(f)
            continue
        needs_copy = encoding != "utf8" or (strip_bom and _has_bom(f.local))
        if not needs_copy:
            counts.append(_decode(f, encoding, ctx))
            out.append(f)
            continue
        target.mkdir(parents=True, exist_ok=True)
        local = target / f"{i:05d}-{f.local.name}"
        with local.open("w", encoding="utf-8", newline="") as fh:
            counts.append(_decode(f, encoding, ctx, fh))
        out.append(SourceFile(f.shown, local))
    return out, counts


def _has_bom(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(3) == codecs.BOM_UTF8


def check_unique_names(names: Sequence[str], f: SourceFile, ctx: StageContext) -> None:
    dups = sorted(n for n, k in Counter(names).items() if k > 1)
    if dups:
        listed = ", ".join(repr(d) for d in dups)
        msg = f"stage '{ctx.stage}': {f.shown} has duplicate column names: {listed}"
        raise DataError(msg, hint="Rename the columns in the file so each name is unique.")


def check_same_columns(
    first: tuple[SourceFile, Sequence[str]],
    other: tuple[SourceFile, Sequence[str]],
    ctx: StageContext,
) -> None:
    (f0, n0), (f1, n1) = first, other
    if list(n0) == list(n1):
        return
    missing = [n for n in n0 if n not in n1]
    extra = [n for n in n1 if n not in n0]
    detail = f"missing {missing}, extra {extra}" if missing or extra else "in another order"
    msg = f"stage '{ctx.stage}': {f1.shown} has other columns than {f0.shown}: {detail}"
    raise DataError(msg, hint="Files read together must share one header.")


# --- Parquet ----------------------------------------------------------------------------------


def _load_parquet(files: list[SourceFile], opts: FileOptions, ctx: StageContext) -> Loaded:
    import pyarrow.parquet as pq

    first: tuple[SourceFile, list[str]] | None = None
    for f in files:
        _check_not_empty(f, ctx)
        try:
            names = list(pq.read_schema(str(f.local)).names)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
            msg = f"stage '{ctx.stage}': {f.shown} is not a readable Parquet file: {exc}"
            hint = "The file may be truncated (an interrupted copy?) or not Parquet at all."
            raise DataError(msg, hint=hint) from None
        check_unique_names(names, f, ctx)
        first = first or (f, names)
        if sorted(names) != sorted(first[1]):
            check_same_columns(first, (f, names), ctx)
    parts = [
        pl.scan_parquet(str(f.local)).with_columns(pl.lit(f.shown).alias(FILE_COLUMN))
        for f in files
    ]
    frame = pl.concat(parts, how="diagonal_relaxed") if len(parts) > 1 else parts[0]
    return Loaded(
        frame,
        where=opts.path,
        files=[f.shown for f in files],
        diagnose=lambda exc: per_file_error(files, lambda f: pl.scan_parquet(str(f.local)), ctx),
    )


# --- JSON and NDJSON --------------------------------------------------------------------------


def _pinpoint_ndjson(f: SourceFile, ctx: StageContext) -> DataError | None:
    with f.local.open(encoding="utf-8-sig", errors="replace") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                msg = (
                    f"stage '{ctx.stage}': {f.shown} line {n} is not valid JSON: "
                    f"{exc.msg} at column {exc.colno}"
                )
                return DataError(msg, hint="NDJSON needs one JSON object per line.")
            if not isinstance(value, dict):
                msg = (
                    f"stage '{ctx.stage}': {f.shown} line {n} is a JSON "
                    f"{type(value).__name__}, not an object"
                )
                return DataError(msg, hint="NDJSON needs one JSON object per line.")
    return None


def _load_ndjson(files: list[SourceFile], opts: FileOptions, ctx: StageContext) -> Loaded:
    files, _ = prepare_text(files, opts.encoding, ctx, strip_bom=True)

    def scan(f: SourceFile) -> pl.LazyFrame:
        return pl.scan_ndjson(str(f.local), infer_schema_length=opts.infer_schema_length)

    def diagnose(exc: Exception) -> DuctworkError | None:
        for f in files:
            found = _pinpoint_ndjson(f, ctx)
            if found is not None:
                return found
        return per_file_error(files, scan, ctx)

    try:
        parts = [scan(f).with_columns(pl.lit(f.shown).alias(FILE_COLUMN)) for f in files]
        frame = pl.concat(parts, how="diagonal_relaxed") if len(parts) > 1 else parts[0]
        frame.collect_schema()
    except pl.exceptions.PolarsError as exc:
        raise diagnose(exc) or DataError(
            f"stage '{ctx.stage}': cannot read {opts.path}: {first_line(exc)}"
        ) from None
    return Loaded(frame, where=opts.path, files=[f.shown for f in files], diagnose=diagnose)


def dig(value: Any, path: str | None, where: str) -> Any:
    """Follow a dotted path (``data.items``) into parsed JSON; a DataError names what is there."""
    if not path:
        return value
    current = value
    for i, key in enumerate(path.split(".")):
        if isinstance(current, dict) and key in current:
            current = current[key]
        elif isinstance(current, list) and key.isdigit() and int(key) < len(current):
            current = current[int(key)]
        else:
            at = ".".join(path.split(".")[:i]) or "the top level"
            keys = ", ".join(sorted(current)[:10]) if isinstance(current, dict) else ""
            have = f" (keys there: {keys})" if keys else ""
            msg = f"{where}: records_path '{path}' not found: no '{key}' at {at}{have}"
            raise DataError(msg)
    return current


def frame_from_records(records: Any, where: str, records_path: str | None) -> pl.DataFrame:
    """A list of JSON objects -> a table (nested objects flattened to ``a.b`` columns)."""
    if isinstance(records, dict) and not records_path:
        lists = sorted(k for k, v in records.items() if isinstance(v, list))
        hint = f"Set records_path to one of: {', '.join(lists)}." if lists else None
        msg = f"{where}: the JSON is an object, not a list of records"
        raise DataError(msg, hint=hint)
    if not isinstance(records, list):
        at = f"at '{records_path}' " if records_path else ""
        msg = f"{where}: expected a list of records {at}but found a {type(records).__name__}"
        raise DataError(msg)
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            msg = f"{where}: record {i + 1} is a {type(rec).__name__}, not an object"
            raise DataError(msg, hint="Point records_path at a list of JSON objects.")
    if not records:
        return pl.DataFrame()
    try:
        return pl.json_normalize(records, separator=".", infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        msg = f"{where}: cannot build a table from the records: {first_line(exc)}"
        raise DataError(msg, hint="Declare `schema:` for the mixed-type fields.") from None


def _load_json(files: list[SourceFile], opts: FileOptions, ctx: StageContext) -> Loaded:
    files, _ = prepare_text(files, opts.encoding, ctx, strip_bom=True)
    frames = []
    for f in files:
        codec = "utf-8" if opts.encoding != "utf8-lossy" else "utf-8-sig"
        text = f.local.read_text(encoding=codec, errors="replace").removeprefix("\ufeff")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            msg = (
                f"stage '{ctx.stage}': {f.shown} is not valid JSON: {exc.msg} at line "
                f"{exc.lineno} column {exc.colno}"
            )
            raise DataError(msg) from None
        where = f"stage '{ctx.stage}': {f.shown}"
        df = frame_from_records(dig(doc, opts.records_path, where), where, opts.records_path)
        if df.width:  # an empty list of records adds nothing
            frames.append(df.with_columns(pl.lit(f.shown).alias(FILE_COLUMN)))
    frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
    return Loaded(frame.lazy(), where=opts.path, files=[f.shown for f in files])


# --- shared -----------------------------------------------------------------------------------


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def per_file_error(
    files: list[SourceFile], scan: Callable[[SourceFile], pl.LazyFrame], ctx: StageContext
) -> DataError | None:
    """Read files one by one to name the one that fails, with Polars' own reason."""
    for f in files:
        try:
            scan(f).select(pl.all().null_count()).collect()
        except (pl.exceptions.PolarsError, OSError) as exc:
            msg = f"stage '{ctx.stage}': cannot read {f.shown}: {_polars_reason(exc)}"
            return DataError(msg)
    return None


def _polars_reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    keep = [ln for ln in lines[:4] if not ln.startswith(("You might", "-", "This error"))]
    return " ".join(keep) or type(exc).__name__


def load_files(opts: FileOptions, ctx: StageContext) -> Loaded:
    """Match, check and lazily scan the files; raises DataError/SourceError on bad input."""
    files = match_files(opts, ctx)
    ctx.metric(files=len(files), bytes=sum(f.local.stat().st_size for f in files))
    if opts.format in ("csv", "tsv"):
        from ductwork.connectors.csv_files import load_csv

        return load_csv(files, opts, ctx)
    if opts.format == "parquet":
        return _load_parquet(files, opts, ctx)
    if opts.format == "ndjson":
        return _load_ndjson(files, opts, ctx)
    return _load_json(files, opts, ctx)
