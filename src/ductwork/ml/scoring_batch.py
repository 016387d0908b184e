"""Batch scoring: a file (or a lazy frame) of any size in, predictions out, in bounded memory.

The input is read in chunks of ``chunk_rows`` rows (Parquet and CSV by Polars' streaming engine,
which reads ahead while the model works), so memory depends on the chunk size, not on the input
size. Each chunk is checked against the bundle's input contract (:meth:`Bundle.validate`): rows
that break it go to the quarantine with one reason per broken rule, the others are predicted
and appended, one Parquet row group per chunk, to the output::

    <keep columns>  prediction  proba_<class> ...  model_version

Every input row ends up in exactly one of the two outputs; the counts are checked at the end.
Outputs are written to a temporary file next to the target and moved into place on success,
so a failed run leaves no half-written file.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import polars as pl

from ductwork.errors import DataError, InvariantError, did_you_mean
from ductwork.ml.bundle import FAILED, META_FILE, PREDICTION, ROW, Bundle
from ductwork.ml.resolve import load_bundle, parse_ref

MODEL_VERSION = "model_version"
DEFAULT_CHUNK_ROWS = 250_000
Engine = Literal["sklearn", "onnx"]
OnInvalid = Literal["quarantine", "fail"]
Progress = Callable[[float, float | None, str], None]
_SHOWN_CATEGORIES = 10


@dataclass
class ScoreSummary:
    """What a scoring run did. ``rows_in == rows_scored + rows_quarantined`` always."""

    rows_in: int
    rows_scored: int
    rows_quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)  # rule broken -> rows
    model_version: str = ""
    engine: str = "sklearn"
    output: str = ""
    quarantine: str | None = None  # None when no quarantine file was written
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}


# -------------------------------------------------------------------------- model references
def resolve_model(
    ref: str | os.PathLike[str], *, project_dir: Path | None = None
) -> tuple[Bundle, str]:
    """The bundle a reference names and the version label written with its predictions.

    A bundle directory is labelled with its ``model_id`` (a prefix of the model file's sha256);
    ``NAME@ALIAS`` and ``NAME/VERSION`` with ``NAME/VERSION`` (for an alias, the version it
    points to now).
    """
    text = str(ref)
    bundle = load_bundle(text, project_dir=project_dir)
    if bundle is None:  # only with missing_ok; kept for the type checker
        msg = f"no model bundle for '{text}'"
        raise DataError(msg)
    return bundle, version_label(text, bundle, project_dir=project_dir)


def version_label(ref: str, bundle: Bundle, *, project_dir: Path | None = None) -> str:
    """``NAME/VERSION`` for a registry reference, else the bundle's ``model_id``."""
    path = Path(ref)
    if not path.is_absolute() and project_dir is not None:
        path = project_dir / path
    if path.exists() or (path / META_FILE).exists():
        return bundle.meta.model_id
    name, _alias, version = parse_ref(ref)
    if version is None and bundle.path.name.isdigit():  # cached as <store>/models/NAME/VERSION
        version = int(bundle.path.name)
    return f"{name}/{version}" if version is not None else f"{name}:{bundle.meta.model_id}"


# -------------------------------------------------------------------------------- reading
def _reader(
    source: str | os.PathLike[str] | pl.LazyFrame | pl.DataFrame, model_columns: Sequence[str]
) -> pl.LazyFrame:
    if isinstance(source, pl.DataFrame):
        return source.lazy()
    if isinstance(source, pl.LazyFrame):
        return source
    path = Path(source)
    if not path.exists():
        msg = f"no input file at '{source}'"
        raise DataError(msg)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq") or path.is_dir():
        return pl.scan_parquet(path)
    if suffix in (".csv", ".tsv", ".txt"):
        separator = "\t" if suffix == ".tsv" else ","
        try:
            header = pl.read_csv(path, separator=separator, n_rows=0).columns
        except pl.exceptions.PolarsError as exc:
            msg = f"cannot read '{source}' as CSV: {exc}"
            raise DataError(msg) from None
        # the model's columns are read as text: the contract check casts them and quarantines
        # values that are not numbers, instead of the reader failing on the first one
        overrides = {c: pl.String for c in model_columns if c in header}
        return pl.scan_csv(
            path, separator=separator, schema_overrides=overrides, infer_schema_length=10_000
        )
    msg = f"cannot read '{source}': the input must be a .parquet or .csv file"
    raise DataError(msg)


def _rows_total(lf: pl.LazyFrame, source: object) -> int | None:
    """The row count when it is cheap to know (Parquet metadata), else None."""
    if isinstance(source, pl.DataFrame):
        return source.height
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() in (
        ".parquet",
        ".pq",
    ):
        try:
            return int(lf.select(pl.len()).collect().item())
        except pl.exceptions.PolarsError:
            return None
    return None


def _chunks(lf: pl.LazyFrame, chunk_rows: int, source: object) -> Iterator[pl.DataFrame]:
    try:
        yield from lf.collect_batches(chunk_size=chunk_rows, maintain_order=True)
    except pl.exceptions.PolarsError as exc:
        msg = f"cannot read the input {_describe(source)}: {exc}"
        raise DataError(msg) from None


def _describe(source: object) -> str:
    return f"'{source}'" if isinstance(source, (str, os.PathLike)) else "frame"


# -------------------------------------------------------------------------------- writing
class _Sink:
    """Appends frames to a Parquet (one row group per frame, zstd) or CSV file.

    Written to ``<name>.tmp`` and renamed on :meth:`commit`; :meth:`discard` removes it.
    """

    def __init__(self, path: Path, schema: pl.Schema) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.schema = schema
        self.csv = path.suffix.lower() in (".csv", ".tsv")
        self.separator = "\t" if path.suffix.lower() == ".tsv" else ","
        self.rows = 0
        self._writer: Any = None
        self._file: IO[bytes] | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.csv:
            self._file = self.tmp.open("wb")
        else:
            import pyarrow.parquet as pq

            self._arrow_schema = pl.DataFrame(schema=schema).to_arrow().schema
            # dictionary pages only where values repeat (labels, ids as text, model_version):
            # for probabilities they cost a third of the write and make the file larger
            repeating = [
                name
                for name, dtype in schema.items()
                if dtype in (pl.String, pl.Boolean, pl.Categorical) or isinstance(dtype, pl.Enum)
            ]
            self._writer = pq.ParquetWriter(
                self.tmp, self._arrow_schema, compression="zstd", use_dictionary=repeating
            )

    def write(self, frame: pl.DataFrame) -> None:
        frame = frame.select(self.schema.names()).cast(dict(self.schema), strict=False)  # type: ignore[arg-type]
        if self._file is not None:
            flat = frame.with_columns(
                pl.col(name).list.join("; ")
                for name, dtype in frame.schema.items()
                if isinstance(dtype, pl.List)
            )
            flat.write_csv(self._file, include_header=self.rows == 0, separator=self.separator)
        elif frame.height:
            table = frame.to_arrow()
            if table.schema != self._arrow_schema:
                table = table.cast(self._arrow_schema)
            self._writer.write_table(table, row_group_size=max(1, frame.height))
        self.rows += frame.height

    def commit(self) -> Path:
        if self._file is not None and self.rows == 0:
            self.write(pl.DataFrame(schema=self.schema))  # the header alone
        self._close()
        self.tmp.replace(self.path)
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(Exception):
            self._close()
        with contextlib.suppress(OSError):
            self.tmp.unlink(missing_ok=True)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._file is not None:
            self._file.close()
            self._file = None


# -------------------------------------------------------------------------------- scoring
def score_file(
    bundle: Bundle,
    source: str | os.PathLike[str] | pl.LazyFrame | pl.DataFrame,
    output_path: str | os.PathLike[str],
    quarantine_path: str | os.PathLike[str] | None,
    *,
    model_version: str,
    keep: Sequence[str] = (),
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    engine: Engine = "sklearn",
    on_invalid: OnInvalid = "quarantine",
    progress: Progress | None = None,
    rows_total: int | None = None,
    write_empty_quarantine: bool = True,
    context: str = "predict",
) -> ScoreSummary:
    """Predict every row of ``source`` into ``output_path`` (Parquet, or CSV by suffix).

    Rows that break the bundle's input contract go to ``quarantine_path`` with ``_failed_checks``
    and ``_row`` (their position in the input); with ``on_invalid="fail"`` the first such row
    raises :class:`DataError` naming the column, the value and the row instead. ``keep`` names
    input columns copied to the output (ids). The quarantine file is written even when empty
    unless ``write_empty_quarantine`` is false (or ``quarantine_path`` is None, which needs
    ``on_invalid="fail"``). ``context`` starts every error message (the stage, or ``predict``).
    """
    started = time.perf_counter()
    if chunk_rows < 1:
        msg = f"{context}: chunk_rows must be at least 1, not {chunk_rows}"
        raise DataError(msg)
    q_path = Path(quarantine_path) if quarantine_path is not None else None
    if q_path is None and on_invalid != "fail":
        msg = f"{context}: a quarantine path is needed unless invalid rows fail the run"
        raise DataError(msg)
    meta = bundle.meta
    needed = meta.input_columns
    lf = _reader(source, needed)
    try:
        schema = lf.collect_schema()
    except pl.exceptions.PolarsError as exc:
        msg = f"{context}: cannot read the input {_describe(source)}: {exc}"
        raise DataError(msg) from None
    _check_columns(context, schema, needed, keep, bundle)
    columns = list(dict.fromkeys([*keep, *needed]))
    lf = lf.select(columns)
    if rows_total is None:
        rows_total = _rows_total(lf, source)
    predict = _predictor(bundle, engine, context)

    out_schema = pl.Schema(
        [
            *((c, schema[c]) for c in keep),
            *bundle.output_polars_schema().items(),
            (MODEL_VERSION, pl.String()),
        ]
    )
    q_schema = pl.Schema(
        [*((c, schema[c]) for c in columns), (FAILED, pl.List(pl.String())), (ROW, pl.Int64())]
    )
    sink = _Sink(Path(output_path), out_schema)
    quarantine: _Sink | None = None
    reasons: dict[str, int] = {}
    rows_in = scored = 0
    try:
        for chunk in _chunks(lf, chunk_rows, source):
            valid, bad = bundle.validate(chunk, offset=rows_in)
            if bad.height:
                if on_invalid == "fail" or q_path is None:
                    raise _first_problem(context, bundle, bad)
                if quarantine is None:
                    quarantine = _Sink(q_path, q_schema)
                quarantine.write(bad)
                for reason, n in bad.get_column(FAILED).explode().value_counts().iter_rows():
                    reasons[str(reason)] = reasons.get(str(reason), 0) + int(n)
                kept = _valid_rows(chunk, bad, rows_in).select(keep) if keep else None
            else:
                kept = chunk.select(keep) if keep else None
            if valid.height:
                predicted = predict(valid)
                parts = [predicted.with_columns(pl.lit(model_version).alias(MODEL_VERSION))]
                if kept is not None:
                    parts.insert(0, kept)
                sink.write(pl.concat(parts, how="horizontal"))
            rows_in += chunk.height
            scored += valid.height
            if progress is not None:
                progress(rows_in, rows_total, "rows")
        quarantined = quarantine.rows if quarantine is not None else 0
        if rows_in != scored + quarantined or sink.rows != scored:
            msg = (
                f"{context}: {rows_in:,} rows in, but {sink.rows:,} predicted and "
                f"{quarantined:,} quarantined"
            )
            raise InvariantError(msg)
        if rows_total is not None and rows_total != rows_in:
            msg = f"{context}: the input has {rows_total:,} rows but {rows_in:,} were read"
            raise InvariantError(msg)
        if quarantine is None and q_path is not None and write_empty_quarantine:
            quarantine = _Sink(q_path, q_schema)
        sink.commit()
        written = str(quarantine.commit()) if quarantine is not None else None
    except BaseException:
        sink.discard()
        if quarantine is not None:
            quarantine.discard()
        raise
    return ScoreSummary(
        rows_in=rows_in,
        rows_scored=scored,
        rows_quarantined=quarantined,
        reasons=dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        model_version=model_version,
        engine=engine,
        output=str(output_path),
        quarantine=written,
        seconds=time.perf_counter() - started,
    )


def _check_columns(
    context: str, schema: pl.Schema, needed: Sequence[str], keep: Sequence[str], bundle: Bundle
) -> None:
    names = schema.names()
    for column in needed:
        if column not in names:
            msg = (
                f"{context}: the input has no column '{column}'{did_you_mean(column, names)}; "
                f"the model needs {', '.join(needed)}"
            )
            raise DataError(msg)
    produced = {PREDICTION, MODEL_VERSION, *bundle.output_polars_schema()}
    for column in keep:
        if column not in names:
            msg = f"{context}: keep column '{column}' is not in the input{did_you_mean(column, names)}"
            raise DataError(msg, hint=f"Columns: {', '.join(names)}")
        if column in produced or column in (FAILED, ROW):
            msg = f"{context}: keep column '{column}' has the name of an output column"
            raise DataError(msg, hint="Rename it in the input first.")


def _predictor(
    bundle: Bundle, engine: Engine, context: str
) -> Callable[[pl.DataFrame], pl.DataFrame]:
    if engine == "onnx":
        from ductwork.ml.onnx import OnnxPredictor

        try:
            return OnnxPredictor.from_bundle(bundle).predict
        except DataError as exc:
            msg = f"{context}: {exc.message}"
            raise DataError(msg, hint=exc.hint) from None
    if engine != "sklearn":
        msg = f"{context}: unknown engine '{engine}' (sklearn or onnx)"
        raise DataError(msg)
    bundle.model  # noqa: B018 - load (and verify) the model before the first chunk is read
    return bundle.predict


def _valid_rows(chunk: pl.DataFrame, bad: pl.DataFrame, offset: int) -> pl.DataFrame:
    """The rows of ``chunk`` that are not in ``bad`` (by ``_row``), in order."""
    import numpy as np

    mask = np.ones(chunk.height, dtype=bool)
    mask[bad.get_column(ROW).to_numpy() - offset] = False
    return chunk.filter(pl.Series(mask))


def _first_problem(context: str, bundle: Bundle, bad: pl.DataFrame) -> DataError:
    """A :class:`DataError` for the first quarantined row: the column, the value, the row."""
    row = bad.row(0, named=True)
    reason = row[FAILED][0]
    specs = {s.name: s for s in bundle.meta.input_schema}
    column = next((name for name in specs if reason.startswith(f"{name}: ")), None)
    where = f"(row {row[ROW]})"
    if column is None:
        return DataError(f"{context}: row {row[ROW]} breaks the model's input contract: {reason}")
    spec = specs[column]
    value = row[column]
    shown = repr(value) if isinstance(value, str) else str(value)
    rule = reason[len(column) + 2 :]
    hint = "Fix or drop the row, or quarantine invalid rows instead of failing."
    if rule == "unknown category":
        known = spec.categories or []
        listed = ", ".join(known[:_SHOWN_CATEGORIES]) + (
            ", ..." if len(known) > _SHOWN_CATEGORIES else ""
        )
        msg = (
            f"{context}: column '{column}' has a category the model has not seen: {shown} "
            f"{where}; known: {listed}"
        )
    elif rule == "null":
        msg = f"{context}: column '{column}' is null {where}, and the model was trained without nulls in it"
    elif rule == "NaN":
        msg = f"{context}: column '{column}' is NaN {where}"
    elif rule.startswith("not "):
        msg = f"{context}: column '{column}' has a value that is {rule} ({spec.dtype}): {shown} {where}"
    else:
        msg = f"{context}: column '{column}' breaks the model's input contract ({rule}): {shown} {where}"
    return DataError(msg, hint=hint)
