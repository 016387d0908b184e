"""CSV/TSV reading for :mod:`ductwork.connectors.files`: the checks Polars does not make.

Polars pads rows with too few fields with nulls and reads blank lines as rows of nulls; Arrow's
CSV parser reports ragged rows, so one fast Arrow pass (no column converted) finds them, and the
stdlib ``csv`` module then pinpoints the line for the message (on the error path only).
Duplicate and differing headers are refused; trailing blank lines are dropped.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

import polars as pl

from ductwork.connectors.files import (
    FILE_COLUMN,
    FileOptions,
    Loaded,
    SourceFile,
    check_same_columns,
    check_unique_names,
    first_line,
    per_file_error,
    prepare_text,
)
from ductwork.core.contract import StageContext
from ductwork.errors import DataError


def _csv_rows(f: SourceFile, opts: FileOptions, encoding: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of each record, the header included; for pinpointing only."""
    codec = "utf-8-sig" if encoding in ("utf8", "utf8-lossy") else "utf-8"
    errors = "replace"
    with f.local.open(encoding=codec, errors=errors, newline="") as fh:
        if opts.quote_char is None:
            reader = csv.reader(fh, delimiter=opts.separator, quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(fh, delimiter=opts.separator, quotechar=opts.quote_char)
        for row in reader:
            yield reader.line_num, row


def _pinpoint_csv(
    f: SourceFile, opts: FileOptions, encoding: str, ctx: StageContext
) -> DataError | None:
    rows = _csv_rows(f, opts, encoding)
    expected: int | None = None
    blank_at: int | None = None
    for n, (line, row) in enumerate(rows):
        if n < opts.skip_rows:
            continue
        if expected is None:
            expected = len(row)
            continue
        if not row:
            blank_at = blank_at or line
            continue
        if blank_at is not None and expected > 1:
            msg = f"stage '{ctx.stage}': {f.shown} line {blank_at} is blank inside the data"
            hint = "Remove the blank line (blank lines at the end of a file are ignored)."
            return DataError(msg, hint=hint)
        if len(row) != expected:
            more = "more" if len(row) > expected else "fewer"
            preview = opts.separator.join(row)[:80]
            msg = (
                f"stage '{ctx.stage}': {f.shown} line {line} has {len(row)} fields but the "
                f"header has {expected} ({more} fields than columns): {preview!r}"
            )
            hint = "Fix the row (a missing or extra separator, or an unclosed quote?)."
            return DataError(msg, hint=hint)
    return None


def _csv_structure(
    f: SourceFile, opts: FileOptions, encoding: str, ctx: StageContext
) -> tuple[list[str], int]:
    """Header names and row count of a CSV file (blank lines count as rows), via Arrow's parser.

    Polars pads rows with too few fields with nulls; Arrow's parser reports them, so ragged
    rows are found here in one fast pass without converting any column.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    ragged: list[str] = []

    def on_invalid(row: Any) -> str:
        ragged.append(row.text)
        return "skip"

    read = pacsv.ReadOptions(
        skip_rows=opts.skip_rows,
        autogenerate_column_names=not opts.has_header,
        encoding="utf8",
        block_size=1 << 22,
    )
    parse = pacsv.ParseOptions(
        delimiter=opts.separator,
        quote_char=opts.quote_char or False,
        newlines_in_values=True,
        ignore_empty_lines=False,  # count blank lines as rows, as Polars does
        invalid_row_handler=on_invalid,
    )
    try:
        reader = pacsv.open_csv(
            str(f.local),
            read_options=read,
            parse_options=parse,
            convert_options=pacsv.ConvertOptions(include_columns=[]),
        )
        names = list(reader.schema.names)
        rows = sum(batch.num_rows for batch in reader)
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" in str(exc):
            msg = f"stage '{ctx.stage}': {f.shown} has no header line"
            raise DataError(msg) from None
        found = _pinpoint_csv(f, opts, encoding, ctx)
        msg = f"stage '{ctx.stage}': cannot parse {f.shown}: {first_line(exc)}"
        raise found or DataError(msg) from None
    if ragged:
        found = _pinpoint_csv(f, opts, encoding, ctx)
        msg = (
            f"stage '{ctx.stage}': {f.shown} has {len(ragged)} row(s) whose number of fields "
            f"differs from the header ({len(names)}), e.g. {ragged[0][:80]!r}"
        )
        raise found or DataError(msg, hint="Fix those rows (missing or extra separators).")
    return names, rows


def _csv_scan_args(opts: FileOptions, encoding: str) -> dict[str, Any]:
    return {
        "has_header": opts.has_header,
        "separator": opts.separator,
        "quote_char": opts.quote_char,
        "skip_rows": opts.skip_rows,
        "null_values": list(opts.null_values) if opts.null_values is not None else None,
        "encoding": "utf8-lossy" if encoding == "utf8-lossy" else "utf8",
        "raise_if_empty": False,
    }


def load_csv(files: list[SourceFile], opts: FileOptions, ctx: StageContext) -> Loaded:
    files, counts = prepare_text(files, opts.encoding, ctx, strip_bom=False)
    enc = opts.encoding
    shapes = []
    for f, (blank_inside, trailing) in zip(files, counts, strict=True):
        names, rows = _csv_structure(f, opts, enc, ctx)
        check_unique_names(names, f, ctx)
        if blank_inside:
            found = _pinpoint_csv(f, opts, enc, ctx)
            if found is not None:
                raise found
        shapes.append((names, rows, trailing))
        check_same_columns((files[0], shapes[0][0]), (f, names), ctx)
    args = _csv_scan_args(opts, enc)
    # infer types from the files that have rows: a header-only file would make every column text
    paths = [str(f.local) for f, s in zip(files, shapes, strict=True) if s[1] > s[2]]
    paths = paths or [str(files[0].local)]
    try:
        schema = pl.scan_csv(
            paths,
            infer_schema_length=opts.infer_schema_length,
            infer_schema_files=len(paths),
            **args,
        ).collect_schema()
    except pl.exceptions.PolarsError as exc:
        raise per_file_error(files, lambda f: pl.scan_csv(str(f.local), **args), ctx) or (
            DataError(f"stage '{ctx.stage}': cannot read {opts.path}: {first_line(exc)}")
        ) from None
    dtypes = {n: (pl.String() if n in opts.text_columns else t) for n, t in schema.items()}

    def scan(f: SourceFile, rows: int, trailing: int) -> pl.LazyFrame:
        lf = pl.scan_csv(str(f.local), schema=dtypes, **args)
        if trailing:
            lf = lf.head(rows - trailing)  # Polars reads trailing blank lines as rows of nulls
        return lf.with_columns(pl.lit(f.shown).alias(FILE_COLUMN))

    parts = [scan(f, rows, trailing) for f, (_, rows, trailing) in zip(files, shapes, strict=True)]
    frame = pl.concat(parts, how="vertical") if len(parts) > 1 else parts[0]
    return Loaded(
        frame,
        where=opts.path,
        files=[f.shown for f in files],
        diagnose=lambda exc: per_file_error(
            files, lambda f: pl.scan_csv(str(f.local), schema=dtypes, **args), ctx
        ),
    )
