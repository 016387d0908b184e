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

With ``fan_out="ray"`` (or ``"auto"`` inside a Ray worker, i.e. under ``executor: ray``) the
chunks are scored by Ray tasks spread over the cluster instead (:func:`_score_on_ray`): this
process still reads the input and writes both outputs, in input order, so the files are the
same as a local run's; only the validate-and-predict step moves. Ray is imported only then.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, cast

import polars as pl

from ductwork.errors import (
    DataError,
    DuctworkError,
    InvariantError,
    SourceError,
    did_you_mean,
    import_optional,
)
from ductwork.ml.bundle import FAILED, META_FILE, PREDICTION, ROW, Bundle
from ductwork.ml.resolve import load_bundle, parse_ref

if TYPE_CHECKING:
    import pyarrow as pa

MODEL_VERSION = "model_version"
DEFAULT_CHUNK_ROWS = 250_000
Engine = Literal["sklearn", "onnx"]
OnInvalid = Literal["quarantine", "fail"]
FanOut = Literal["auto", "none", "ray"]
Progress = Callable[[float, float | None, str], None]
Predictor = Callable[[pl.DataFrame], pl.DataFrame]
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
    fan_out: str = "none"  # where the chunks were scored: none (this process) or ray
    chunks: int = 0
    chunk_workers: dict[str, int] = field(default_factory=dict)  # "host:pid" -> chunks (ray)

    @property
    def rows_per_s(self) -> float:
        return self.rows_in / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The ``ductwork.predict/v1`` summary (the fan-out fields are the stage's metrics)."""
        doc = asdict(self)
        for key in ("fan_out", "chunks", "chunk_workers"):
            doc.pop(key)
        return {**doc, "rows_per_s": round(self.rows_per_s, 1)}


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
    fan_out: FanOut = "none",
    ray_address: str | None = None,
) -> ScoreSummary:
    """Predict every row of ``source`` into ``output_path`` (Parquet, or CSV by suffix).

    Rows that break the bundle's input contract go to ``quarantine_path`` with ``_failed_checks``
    and ``_row`` (their position in the input); with ``on_invalid="fail"`` the first such row
    raises :class:`DataError` naming the column, the value and the row instead. ``keep`` names
    input columns copied to the output (ids). The quarantine file is written even when empty
    unless ``write_empty_quarantine`` is false (or ``quarantine_path`` is None, which needs
    ``on_invalid="fail"``). ``context`` starts every error message (the stage, or ``predict``).

    ``fan_out`` says where the chunks are scored: ``none`` here; ``ray`` as Ray tasks on the
    cluster this process is connected to, else the one at ``ray_address`` (``RAY_ADDRESS``, or a
    local cluster started for the call); ``auto`` on Ray when this process is a Ray worker and
    the input has more than one chunk, else here. The outputs are the same files either way.
    """
    started = time.perf_counter()
    if chunk_rows < 1:
        msg = f"{context}: chunk_rows must be at least 1, not {chunk_rows}"
        raise DataError(msg)
    if fan_out not in ("auto", "none", "ray"):
        msg = f"{context}: unknown fan_out '{fan_out}' (auto, none or ray)"
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
    on_ray = _use_ray(fan_out, rows_total, chunk_rows)
    if engine not in ("sklearn", "onnx"):
        msg = f"{context}: unknown engine '{engine}' (sklearn or onnx)"
        raise DataError(msg)
    # on Ray the workers load the model; here only for local scoring
    predict = None if on_ray else _predictor(bundle, engine, context)

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
    spec = _ChunkSpec(
        keep=tuple(keep),
        model_version=model_version,
        fail=on_invalid == "fail" or q_path is None,
        context=context,
    )
    out = _Outputs(Path(output_path), out_schema, q_path, q_schema, progress, rows_total)
    workers: dict[str, int] = {}
    try:
        if predict is not None:
            for chunk in _chunks(lf, chunk_rows, source):
                predicted, bad = _score_chunk(bundle, predict, chunk, out.rows_in, spec)
                out.add(chunk.height, predicted, bad)
        else:
            with _ray_session(context, ray_address) as ray:
                workers = _score_on_ray(
                    ray, _chunks(lf, chunk_rows, source), bundle, engine, spec, out, chunk_rows
                )
        quarantined = out.quarantine.rows if out.quarantine is not None else 0
        rows_in, scored = out.rows_in, out.scored
        if rows_in != scored + quarantined or out.sink.rows != scored:
            msg = (
                f"{context}: {rows_in:,} rows in, but {out.sink.rows:,} predicted and "
                f"{quarantined:,} quarantined"
            )
            raise InvariantError(msg)
        if rows_total is not None and rows_total != rows_in:
            msg = f"{context}: the input has {rows_total:,} rows but {rows_in:,} were read"
            raise InvariantError(msg)
        if out.quarantine is None and q_path is not None and write_empty_quarantine:
            out.quarantine = _Sink(q_path, q_schema)
        out.sink.commit()
        written = str(out.quarantine.commit()) if out.quarantine is not None else None
    except BaseException:
        out.discard()
        raise
    return ScoreSummary(
        rows_in=rows_in,
        rows_scored=scored,
        rows_quarantined=quarantined,
        reasons=dict(sorted(out.reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        model_version=model_version,
        engine=engine,
        output=str(output_path),
        quarantine=written,
        seconds=time.perf_counter() - started,
        fan_out="ray" if on_ray else "none",
        chunks=out.chunks,
        chunk_workers=dict(sorted(workers.items())),
    )


@dataclass(frozen=True)
class _ChunkSpec:
    """What scoring one chunk needs besides the model: the same here and on a Ray worker."""

    keep: tuple[str, ...]
    model_version: str
    fail: bool  # an invalid row raises (on_invalid: fail) instead of going to the quarantine
    context: str


def _score_chunk(
    bundle: Bundle, predict: Predictor, chunk: pl.DataFrame, offset: int, spec: _ChunkSpec
) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """One chunk's predictions (None: no valid row) and quarantined rows (None: none).

    ``offset`` is the chunk's first row in the input (``_row`` counts from it). The one
    function both paths call, so local and fanned-out scoring give the same rows.
    """
    valid, bad = bundle.validate(chunk, offset=offset)
    if bad.height:
        if spec.fail:
            raise _first_problem(spec.context, bundle, bad)
        kept = _valid_rows(chunk, bad, offset).select(spec.keep) if spec.keep else None
    else:
        kept = chunk.select(spec.keep) if spec.keep else None
    if not valid.height:
        return None, bad if bad.height else None
    predicted = predict(valid)
    parts = [predicted.with_columns(pl.lit(spec.model_version).alias(MODEL_VERSION))]
    if kept is not None:
        parts.insert(0, kept)
    return pl.concat(parts, how="horizontal"), bad if bad.height else None


class _Outputs:
    """The two output files and the counts, fed one scored chunk at a time, in input order."""

    def __init__(
        self,
        path: Path,
        schema: pl.Schema,
        q_path: Path | None,
        q_schema: pl.Schema,
        progress: Progress | None,
        rows_total: int | None,
    ) -> None:
        self.sink = _Sink(path, schema)
        self.q_path = q_path
        self.q_schema = q_schema
        self.quarantine: _Sink | None = None  # made with the first invalid row
        self.progress = progress
        self.rows_total = rows_total
        self.reasons: dict[str, int] = {}
        self.rows_in = self.scored = self.chunks = 0

    def add(self, rows: int, predicted: pl.DataFrame | None, bad: pl.DataFrame | None) -> None:
        if bad is not None and bad.height:
            if self.quarantine is None:
                if self.q_path is None:  # _score_chunk raised already; kept for the type checker
                    msg = "invalid rows without a quarantine path"
                    raise InvariantError(msg)
                self.quarantine = _Sink(self.q_path, self.q_schema)
            self.quarantine.write(bad)
            for reason, n in bad.get_column(FAILED).explode().value_counts().iter_rows():
                self.reasons[str(reason)] = self.reasons.get(str(reason), 0) + int(n)
        if predicted is not None and predicted.height:
            self.sink.write(predicted)
            self.scored += predicted.height
        self.rows_in += rows
        self.chunks += 1
        if self.progress is not None:
            self.progress(self.rows_in, self.rows_total, "rows")

    def discard(self) -> None:
        self.sink.discard()
        if self.quarantine is not None:
            self.quarantine.discard()


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
    bundle: Bundle, engine: Engine, context: str, *, threads: int | None = None
) -> Callable[[pl.DataFrame], pl.DataFrame]:
    """The bundle's predict function for ``engine``, model loaded; ``threads`` caps ONNX
    Runtime's (a Ray task has one CPU; scikit-learn's OpenMP follows Ray's OMP_NUM_THREADS)."""
    if engine == "onnx":
        from ductwork.ml.onnx import OnnxPredictor

        try:
            return OnnxPredictor.from_bundle(bundle, threads=threads).predict
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


# ------------------------------------------------------------------------- fan-out on Ray
class ChunkFailed(RuntimeError):
    """A chunk could not be scored on a Ray worker (the worker died, or the model raised).

    Not a :class:`DuctworkError`: like any unexpected error it may be transient (a worker out
    of memory), so the stage's ``retries`` re-run it. The message names the chunk's rows.
    """


def _use_ray(fan_out: FanOut, rows_total: int | None, chunk_rows: int) -> bool:
    if rows_total == 0:
        return False  # nothing to fan out
    if fan_out == "ray":
        return True
    if fan_out == "none" or (rows_total is not None and rows_total <= chunk_rows):
        return False  # one chunk: a Ray task would add a hop and a model load, nothing else
    return _in_ray_worker()


def _in_ray_worker() -> bool:
    """Whether this process is a Ray worker (a stage under ``executor: ray``).

    Looked up in ``sys.modules`` only: a process that never imported Ray is not one, and
    stays free of its import cost.
    """
    ray: Any = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        return bool(ray.is_initialized()) and (
            ray.get_runtime_context().worker.mode == ray.WORKER_MODE
        )
    except Exception:  # a Ray without these APIs: score here
        return False


class _RaySession:
    """The Ray connection of ``fan_out: ray`` outside a Ray worker, shared by the stages
    of this process that score at once, and closed by the last of them when it opened it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0
        self.owned = False


_SESSION = _RaySession()


@contextlib.contextmanager
def _ray_session(context: str, address: str | None) -> Iterator[Any]:
    """Ray, initialised: the current connection, else ``address`` (``DUCTWORK_RAY_ADDRESS``),
    else ``RAY_ADDRESS``, else a local cluster on 127.0.0.1 that is stopped afterwards."""
    ray: Any = import_optional("ray", extra="ray", feature=f"{context}: fan_out: ray")
    with _SESSION.lock:
        if not ray.is_initialized():
            _ray_connect(ray, context, address or os.environ.get("RAY_ADDRESS") or "local")
            _SESSION.owned = True
        _SESSION.users += 1
    try:
        yield ray
    finally:
        with _SESSION.lock:
            _SESSION.users -= 1
            if _SESSION.users == 0 and _SESSION.owned:
                _SESSION.owned = False
                with contextlib.suppress(Exception):
                    ray.shutdown()  # stops a local cluster; only disconnects from a remote one


def _ray_connect(ray: Any, context: str, address: str) -> None:
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if address == "local":
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(
                address="local",
                num_cpus=os.cpu_count() or 1,
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                **quiet,
            )
        else:
            ray.init(address=address, **quiet)
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        msg = (
            f"{context}: fan_out: ray cannot connect to the Ray cluster at {address}: "
            f"{type(exc).__name__}: {text}"
        )
        raise SourceError(
            msg,
            hint="Set DUCTWORK_RAY_ADDRESS (or RAY_ADDRESS) to the cluster, or unset both to "
            "start a local one. Clusters started with `ray start` use token authentication: "
            "set RAY_AUTH_MODE=token here too, with the cluster's token in ~/.ray/auth_token.",
        ) from exc


@dataclass(frozen=True)
class _ChunkJob:
    """What every chunk task of one scoring run gets besides its rows (a few hundred bytes).

    ``bundle_files`` holds the ObjectRef of the bundle's files inside a list, so Ray does not
    fetch it with every task: a worker fetches it once, on its first chunk of that bundle.
    """

    bundle_sha: str
    bundle_files: list[Any]
    bundle_path: str  # for messages: where the bundle is on the machine that read it
    engine: Engine
    spec: _ChunkSpec


@dataclass
class _ChunkResult:
    worker: str  # host:pid
    predicted: pa.Table | None = None
    bad: pa.Table | None = None
    error: tuple[type[DuctworkError], str, str | None] | None = None  # class, message, hint
    crash: tuple[str, str] | None = None  # an unexpected exception: "Type: text", traceback


@dataclass
class _Pending:
    ref: Any
    first: int  # the chunk's first row (0-based, as _row)
    rows: int
    index: int  # 1-based


def _bundle_files(bundle: Bundle) -> tuple[str, dict[str, bytes]]:
    """The bundle directory's files (relative path -> bytes) and their sha256 together."""
    files: dict[str, bytes] = {}
    digest = hashlib.sha256()
    for path in sorted(p for p in bundle.path.rglob("*") if p.is_file()):
        name = path.relative_to(bundle.path).as_posix()
        files[name] = data = path.read_bytes()
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest(), files


_WORKER_MODELS: collections.OrderedDict[tuple[str, str], tuple[Bundle, Predictor]] = (
    collections.OrderedDict()
)
_WORKER_MODELS_KEPT = 2  # bundles a worker process keeps loaded (a long-lived worker)
_WORKER_LOCK = threading.Lock()


def _worker_model(job: _ChunkJob) -> tuple[Bundle, Predictor]:
    """The bundle and its predictor in this worker process, loaded once per bundle sha."""
    key = (job.bundle_sha, job.engine)
    with _WORKER_LOCK:
        found = _WORKER_MODELS.get(key)
        if found is not None:
            _WORKER_MODELS.move_to_end(key)
            return found
        import ray

        files: dict[str, bytes] = ray.get(job.bundle_files[0])
        directory = Path(tempfile.mkdtemp(prefix="ductwork-bundle-"))
        try:
            for name, data in files.items():
                target = directory / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            del files
            bundle = Bundle.load(directory)
            # reads the model files; one thread: the task has one CPU
            predict = _predictor(bundle, job.engine, job.spec.context, threads=1)
        except DuctworkError as exc:  # name the bundle as the stage knows it
            exc.message = exc.message.replace(str(directory), job.bundle_path)
            raise
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        _WORKER_MODELS[key] = (bundle, predict)
        while len(_WORKER_MODELS) > _WORKER_MODELS_KEPT:
            _WORKER_MODELS.popitem(last=False)
        return bundle, predict


def _score_chunk_task(table: pa.Table, offset: int, job: _ChunkJob) -> _ChunkResult:
    """The Ray task: score one chunk (an Arrow table from the object store) on a worker.

    Errors come back as values, not exceptions, so the stage re-raises a contract error as
    it is raised locally (same class, message and hint).
    """
    result = _ChunkResult(worker=f"{socket.gethostname()}:{os.getpid()}")
    try:
        bundle, predict = _worker_model(job)
        chunk = cast(pl.DataFrame, pl.from_arrow(table))
        predicted, bad = _score_chunk(bundle, predict, chunk, offset, job.spec)
        result.predicted = predicted.to_arrow() if predicted is not None else None
        result.bad = bad.to_arrow() if bad is not None else None
    except DuctworkError as exc:
        result.error = (type(exc), exc.message, exc.hint)
    except Exception as exc:
        result.crash = (f"{type(exc).__name__}: {exc}", traceback.format_exc())
    return result


_REMOTE: dict[str, Any] = {}


def _remote_scorer(ray: Any) -> Any:
    """The Ray remote function, made once per process (one CPU per chunk; a chunk whose
    worker died is re-run: scoring is a pure function of the rows)."""
    if "score" not in _REMOTE:
        _REMOTE["score"] = ray.remote(num_cpus=1, max_retries=3)(_score_chunk_task)
    return _REMOTE["score"]


def _score_on_ray(
    ray: Any,
    chunks: Iterator[pl.DataFrame],
    bundle: Bundle,
    engine: Engine,
    spec: _ChunkSpec,
    out: _Outputs,
    chunk_rows: int,
) -> dict[str, int]:
    """Score ``chunks`` as Ray tasks and write their results to ``out`` in input order.

    Each chunk goes to the object store as an Arrow table (``ray.put``); at most twice as many
    chunks as the cluster has CPUs are in flight (submitted and not yet written), so memory
    stays bounded whatever the input's size. Returns the chunks each worker scored.
    """
    sha, files = _bundle_files(bundle)
    job = _ChunkJob(
        bundle_sha=sha,
        bundle_files=[ray.put(files)],
        bundle_path=str(bundle.path),
        engine=engine,
        spec=spec,
    )
    del files
    remote = _remote_scorer(ray)
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    limit = max(2, 2 * int(cpus))
    total = -(-out.rows_total // chunk_rows) if out.rows_total is not None else None
    pending: collections.deque[_Pending] = collections.deque()
    workers: dict[str, int] = {}

    def write_ready(block: bool) -> None:
        """Write the finished chunks at the head of the queue (waiting for the first one)."""
        while pending:
            head = pending[0]
            ready, _ = ray.wait([head.ref], num_returns=1, timeout=None if block else 0)
            if not ready:
                return
            result = _chunk_result(ray, head, total, spec.context)
            pending.popleft()
            predicted = _from_arrow(result.predicted)
            bad = _from_arrow(result.bad)
            out.add(head.rows, predicted, bad)
            workers[result.worker] = workers.get(result.worker, 0) + 1
            block = False

    offset = index = 0
    try:
        for chunk in chunks:
            index += 1
            ref = remote.remote(ray.put(chunk.to_arrow()), offset, job)
            pending.append(_Pending(ref, offset, chunk.height, index))
            offset += chunk.height
            del chunk
            write_ready(block=len(pending) >= limit)
        while pending:
            write_ready(block=True)
    except BaseException:
        for p in pending:
            with contextlib.suppress(Exception):
                ray.cancel(p.ref)
        raise
    return workers


def _from_arrow(table: pa.Table | None) -> pl.DataFrame | None:
    return None if table is None else cast(pl.DataFrame, pl.from_arrow(table))


def _chunk_result(ray: Any, chunk: _Pending, total: int | None, context: str) -> _ChunkResult:
    """The chunk's result, or the error it ended with, raised here."""
    last = chunk.first + chunk.rows - 1
    of = f" of {total:,}" if total is not None else ""
    where = f"rows {chunk.first:,}-{last:,} (chunk {chunk.index:,}{of})"
    try:
        result: _ChunkResult = ray.get(chunk.ref)
    except Exception as exc:  # the worker died (killed, out of memory) after its retries
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        msg = (
            f"{context}: {where} could not be scored on a Ray worker: "
            f"{type(exc).__name__}: {text}. A worker that runs out of memory needs a smaller "
            "chunk_rows; the worker logs are in the Ray session directory "
            "(…/ray/session_latest/logs)."
        )
        raise ChunkFailed(msg) from exc
    if result.error is not None:  # a contract error (it names its row): as raised locally
        cls, message, hint = result.error
        error = cls.__new__(cls)
        DuctworkError.__init__(error, message, hint=hint)
        raise error
    if result.crash is not None:
        text, remote_tb = result.crash
        failed = ChunkFailed(f"{context}: scoring {where} failed on {result.worker}: {text}")
        failed.add_note(f"the worker's traceback:\n{remote_tb}")
        raise failed
    return result
