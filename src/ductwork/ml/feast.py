"""Publish a table artifact as a Feast feature repository, and use the repository from Python.

:func:`write_repo` (``ductwork export feast DIR --stage S --entity COL``) writes a complete
Feast repository for one table: ``feature_store.yaml`` (local provider, SQLite online store
and registry in the repository's ``data/``, file offline store), ``features.py`` (an Entity
per key column, a FileSource, a FeatureView with a typed Field per column) and
``data/<view>.parquet``, a copy of the artifact with the types the Fields declare. It needs no
Feast installed: it only writes text and Parquet, the same bytes for the same artifact.

:class:`FeatureRepo` (and the module functions of the same names) runs it: :meth:`apply` (what
``feast apply`` does), :meth:`materialize` into the online store, point-in-time training sets
with :meth:`historical_features`, and :meth:`online_features` by entity key (for the model
server). Feast is imported only there: ``import feast`` takes 10+ s.

Feast's file offline store **drops** an entity row whose key has feature rows but none within
the TTL before the row's timestamp (``_filter_ttl`` filters the joined rows instead of nulling
them), and keeps one row per (key, timestamp) (``drop_duplicates``): a training set built with
it directly can silently lose labelled rows. :meth:`historical_features` sends Feast the
distinct (key, timestamp) pairs and joins the answer back onto every entity row, so every row
comes back, in its order, with nulls where no feature value is in the window, and logs how many
rows had none.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from ductwork.errors import DataError, UsageError, did_you_mean, import_optional

if TYPE_CHECKING:
    import pandas as pd

EXTRA = "feast"
FEATURE = "the Feast feature store"
CONFIG_FILE = "feature_store.yaml"
DEFINITIONS_FILE = "features.py"
DATA_DIR = "data"
ENTITY_TIMESTAMP = "event_timestamp"  # Feast's default name in an entity frame

_LOG = logging.getLogger(__name__)
_NAME_RE = re.compile(r"[^A-Za-z0-9_]+")
_TTL_RE = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w)?\s*$")
_TTL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
_UTC = pl.Datetime("us", "UTC")


# ----------------------------------------------------------------------------- types
@dataclass(frozen=True)
class FieldType:
    """How a column is declared to Feast and written to the repository's Parquet copy."""

    feast: str  # the name in feast.types: Int64, Float64, String, Array(Int64), ...
    dtype: pl.DataType  # the Polars type of the copy, the one the Feast type reads


def field_type(dtype: pl.DataType) -> FieldType | None:
    """The Feast type of a Polars type, or None when Feast has none (structs, durations, ...).

    Small integers widen to Int32, unsigned 32-bit to Int64 (Feast has no unsigned or 8/16-bit
    types); categoricals are strings; dates and datetimes are UTC timestamps.
    """
    if dtype == pl.Boolean:
        return FieldType("Bool", pl.Boolean())
    if dtype in (pl.Int8, pl.Int16, pl.Int32, pl.UInt8, pl.UInt16):
        return FieldType("Int32", pl.Int32())
    if dtype in (pl.Int64, pl.UInt32, pl.UInt64):
        return FieldType("Int64", pl.Int64())
    if dtype == pl.Float32:
        return FieldType("Float32", pl.Float32())
    if dtype == pl.Float64 or isinstance(dtype, pl.Decimal):
        return FieldType("Float64", pl.Float64())
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum | pl.Categorical):
        return FieldType("String", pl.String())
    if dtype == pl.Binary:
        return FieldType("Bytes", pl.Binary())
    if dtype == pl.Date or isinstance(dtype, pl.Datetime):
        return FieldType("UnixTimestamp", _UTC)
    if isinstance(dtype, pl.List):
        inner = field_type(_instance(dtype.inner))
        if inner is None or inner.feast.startswith("Array("):
            return None
        return FieldType(f"Array({inner.feast})", pl.List(inner.dtype))
    return None


def _instance(dtype: Any) -> pl.DataType:
    """A list's inner type as an instance (Polars may give the class: ``pl.Int64``)."""
    return dtype() if isinstance(dtype, type) else dtype  # type: ignore[no-any-return]


_ENTITY_VALUE_TYPES = {"Int32": "INT32", "Int64": "INT64", "String": "STRING", "Bytes": "BYTES"}

_POLARS_OF_FEAST = {
    "BOOL": pl.Boolean(),
    "INT32": pl.Int32(),
    "INT64": pl.Int64(),
    "FLOAT32": pl.Float32(),
    "FLOAT64": pl.Float64(),
    "STRING": pl.String(),
    "BYTES": pl.Binary(),
    "UNIX_TIMESTAMP": _UTC,
}


def polars_type(feast_type: Any) -> pl.DataType | None:
    """The Polars type of a Feast type object (a PrimitiveFeastType or an Array)."""
    base = getattr(feast_type, "base_type", None)
    if base is not None:
        inner = polars_type(base)
        return None if inner is None else pl.List(inner)
    return _POLARS_OF_FEAST.get(getattr(feast_type, "name", ""))


def parse_ttl(value: str | int | timedelta) -> timedelta:
    """``90s``, ``30m``, ``12h``, ``1d``, ``2w`` or whole seconds; ``0`` is no TTL."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int) and not isinstance(value, bool):
        seconds = value
    else:
        m = _TTL_RE.match(value) if isinstance(value, str) else None
        if m is None:
            msg = f"ttl {value!r} is not a duration"
            raise UsageError(msg, hint="Write e.g. 30m, 12h, 1d, 2w, or 0 for no TTL.")
        seconds = int(m.group(1)) * _TTL_UNITS[m.group(2)]
    if seconds < 0:
        msg = f"ttl {value!r} is negative"
        raise UsageError(msg, hint="Write e.g. 1d, or 0 for no TTL.")
    return timedelta(seconds=seconds)


# ----------------------------------------------------------------------------- export
@dataclass(frozen=True)
class ExportedRepo:
    """What :func:`write_repo` wrote."""

    directory: Path
    files: list[Path]
    project: str
    view: str
    entities: list[str]
    timestamp: str
    ttl: timedelta
    features: list[str]
    skipped: dict[str, str] = field(default_factory=dict)  # column -> its type, not exported
    dropped_rows: int = 0  # rows without a key or a timestamp: Feast cannot serve them
    start: datetime | None = None  # the earliest and latest event time (UTC) in the copy
    end: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "files": [str(p) for p in self.files],
            "project": self.project,
            "feature_view": self.view,
            "entities": self.entities,
            "timestamp": self.timestamp,
            "ttl_seconds": int(self.ttl.total_seconds()),
            "features": self.features,
            "skipped": self.skipped,
            "dropped_rows": self.dropped_rows,
            "start": self.start.isoformat() if self.start else None,
            "end": self.end.isoformat() if self.end else None,
        }


def feast_name(text: str) -> str:
    """A Feast project or object name: letters, digits and underscores, not starting with _."""
    name = _NAME_RE.sub("_", text).strip("_") or "ductwork"
    return name if not name[0].isdigit() else f"t_{name}"


def write_repo(
    table: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    project: str,
    view: str,
    entities: Sequence[str],
    timestamp: str | None = None,
    ttl: str | int | timedelta = "1d",
    origin: str = "",
    sha256: str = "",
) -> ExportedRepo:
    """Write a Feast repository for the Parquet table ``table`` into ``directory``.

    ``entities`` are the key columns (one Feast Entity each); ``timestamp`` the event time of
    each row (default: the table's only datetime column); every other column the Feast type
    fits becomes a Field. ``origin`` (e.g. ``pipeline 'x', stage 'y'``) and ``sha256`` are
    written into the header of ``features.py``. Writing again overwrites the three files and
    keeps the registry and online store in ``data/`` (``apply`` brings them up to date).
    """
    path = Path(table)
    schema = pl.read_parquet_schema(path)
    project, view = feast_name(project), feast_name(view)
    keys = _check_entities(schema, entities)
    ts = _timestamp_column(schema, timestamp, keys)
    ttl_delta = parse_ttl(ttl)

    types: dict[str, FieldType] = {}
    skipped: dict[str, str] = {}
    for name, dtype in schema.items():
        if name == ts:
            continue
        found = field_type(dtype)
        if found is None:
            skipped[name] = str(dtype)
        else:
            types[name] = found
    features = [n for n in types if n not in keys]
    if not features:
        msg = f"the table has no feature column besides the keys {keys} and '{ts}'"
        raise DataError(msg, hint="Export a table with at least one value column.")

    out = Path(directory).absolute()
    (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
    data_file = f"{DATA_DIR}/{view}.parquet"
    frame = pl.scan_parquet(path).select(
        *[_cast(name, schema[name], types[name].dtype) for name in types],
        _cast(ts, schema[ts], _UTC),
    )
    complete = pl.all_horizontal([pl.col(c).is_not_null() for c in [*keys, ts]])
    total, kept, start, end = (
        frame.select(
            pl.len().alias("total"),
            complete.sum().alias("kept"),
            pl.col(ts).filter(complete).min().alias("start"),
            pl.col(ts).filter(complete).max().alias("end"),
        )
        .collect()
        .row(0)
    )
    try:
        frame.filter(complete).sink_parquet(out / data_file)
    except pl.exceptions.InvalidOperationError as exc:  # a value the Feast type cannot hold
        msg = f"cannot write the table for Feast: {str(exc).splitlines()[0]}"
        raise DataError(msg, hint="Cast the column in a transform stage first.") from None

    config = out / CONFIG_FILE
    config.write_text(_CONFIG.format(project=project, origin=origin or "a table"), "utf-8")
    definitions = out / DEFINITIONS_FILE
    definitions.write_text(
        _definitions(
            project=project,
            view=view,
            keys=keys,
            types=types,
            timestamp=ts,
            ttl=ttl_delta,
            data_file=data_file,
            origin=origin,
            sha256=sha256,
            skipped=skipped,
        ),
        "utf-8",
    )
    return ExportedRepo(
        directory=out,
        files=[config, definitions, out / data_file],
        project=project,
        view=view,
        entities=keys,
        timestamp=ts,
        ttl=ttl_delta,
        features=features,
        skipped=skipped,
        dropped_rows=int(total) - int(kept or 0),
        start=start,
        end=end,
    )


def _cast(name: str, source: pl.DataType, target: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if target == _UTC:
        return _utc(col, source).alias(name)
    if isinstance(target, pl.List) and target.inner == _UTC:
        assert isinstance(source, pl.List)
        return col.list.eval(_utc(pl.element(), _instance(source.inner))).alias(name)
    return col.cast(target).alias(name)


def _utc(col: pl.Expr, source: pl.DataType) -> pl.Expr:
    """A Date or Datetime as Datetime(us, UTC): a naive time is taken as UTC (as Feast takes
    it), an aware one is converted."""
    if source == pl.Date:
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    assert isinstance(source, pl.Datetime)
    col = col.dt.cast_time_unit("us")
    if source.time_zone is None:
        return col.dt.replace_time_zone("UTC")
    return col.dt.convert_time_zone("UTC")


def _check_entities(schema: Mapping[str, pl.DataType], entities: Sequence[str]) -> list[str]:
    keys = list(dict.fromkeys(entities))
    if not keys:
        msg = "an entity (key) column is needed: the rows' join key, e.g. --entity origin"
        raise UsageError(msg)
    for key in keys:
        if key not in schema:
            msg = f"the table has no column '{key}'{did_you_mean(key, list(schema))}"
            raise UsageError(msg, hint=f"Columns: {', '.join(schema)}")
        found = field_type(schema[key])
        if found is None or found.feast not in _ENTITY_VALUE_TYPES:
            msg = f"entity column '{key}' is {schema[key]}; a Feast join key is an integer, text or bytes"
            raise UsageError(msg, hint="Use an id or code column as the entity.")
    return keys


def _timestamp_column(
    schema: Mapping[str, pl.DataType], timestamp: str | None, keys: list[str]
) -> str:
    temporal = [
        n
        for n, t in schema.items()
        if (t == pl.Date or isinstance(t, pl.Datetime)) and n not in keys
    ]
    how = (
        "Feast needs each row's event time (when its values held). Parse it where it is read, "
        "e.g. the flights weather's time_hour (text like 2013-01-01T06:00:00Z) with the "
        "extract stage's schema: {time_hour: datetime}, or derive one in a transform stage."
    )
    if timestamp is None:
        if len(temporal) == 1:
            return temporal[0]
        if not temporal:
            msg = "the table has no date or datetime column to use as the event timestamp"
            raise DataError(msg, hint=how)
        msg = f"the table has several datetime columns ({', '.join(temporal)}): name one"
        raise UsageError(msg, hint="Pass --timestamp COLUMN (the time each row's values held).")
    if timestamp not in schema:
        msg = f"the table has no column '{timestamp}'{did_you_mean(timestamp, list(schema))}"
        raise UsageError(msg, hint=f"Columns: {', '.join(schema)}")
    if timestamp not in temporal:
        msg = f"timestamp column '{timestamp}' is {schema[timestamp]}, not a date or datetime"
        raise DataError(msg, hint=how)
    return timestamp


def _ttl_source(ttl: timedelta) -> str:
    seconds = int(ttl.total_seconds())
    for unit, size in (("weeks", 604800), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds and seconds % size == 0:
            return f"timedelta({unit}={seconds // size})"
    return f"timedelta(seconds={seconds})"


def _definitions(
    *,
    project: str,
    view: str,
    keys: list[str],
    types: dict[str, FieldType],
    timestamp: str,
    ttl: timedelta,
    data_file: str,
    origin: str,
    sha256: str,
    skipped: dict[str, str],
) -> str:
    py = json.dumps  # a JSON string is a valid Python string literal
    used = sorted({re.sub(r"^Array\((.*)\)$", r"\1", t.feast) for t in types.values()})
    if any(t.feast.startswith("Array(") for t in types.values()):
        used = sorted({*used, "Array"})
    entity_vars = {key: f"{feast_name(key)}_entity" for key in keys}
    lines = [
        f'"""Feast definitions for {origin or "a table"}.',
        "",
        "Written by `ductwork export feast`: exporting again overwrites this file and",
        f"{data_file}, a copy of the artifact"
        + (f" {sha256[:12]}" if sha256 else "")
        + " with the types declared below.",
    ]
    if skipped:
        lines += ["", "Columns Feast has no type for, left out:"]
        lines += [f"    {name}: {dtype}" for name, dtype in skipped.items()]
    lines += [
        "",
        f"Project '{project}'. Run `feast apply` here (or ductwork.ml.feast.apply(DIR)), then",
        "`feast materialize START END` to load the online store.",
        '"""',
        "",
        "from datetime import timedelta",
        "",
        "from feast import Entity, FeatureView, Field, FileSource",
        f"from feast.types import {', '.join(used)}",
        "from feast.value_type import ValueType",
        "",
    ]
    for key in keys:
        lines.append(
            f"{entity_vars[key]} = Entity(name={py(key)}, join_keys=[{py(key)}], "
            f"value_type=ValueType.{_ENTITY_VALUE_TYPES[types[key].feast]})"
        )
    lines += [
        "",
        f"{view}_source = FileSource(",
        f"    name={py(view + '_source')},",
        f"    path={py(data_file)},",
        f"    timestamp_field={py(timestamp)},",
        ")",
        "",
        f"{view} = FeatureView(",
        f"    name={py(view)},",
        f"    entities=[{', '.join(entity_vars[k] for k in keys)}],",
        f"    ttl={_ttl_source(ttl)},",
        "    schema=[",
    ]
    lines += [f"        Field(name={py(name)}, dtype={t.feast})," for name, t in types.items()]
    lines += [
        "    ],",
        "    online=True,",
        f"    source={view}_source,",
        ")",
        "",
    ]
    return "\n".join(lines)


_CONFIG = """\
# Feast repository for {origin}, written by `ductwork export feast`.
# Local provider: the registry and the SQLite online store live in data/, the offline store
# reads the Parquet copy in data/. Point online_store / registry at a server to share them.
project: {project}
provider: local
registry: data/registry.db
online_store:
  type: sqlite
  path: data/online_store.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""


# ----------------------------------------------------------------------------- using a repo
class FeatureRepo:
    """A Feast repository on disk: apply, materialize, and read features from it.

    The Feast ``FeatureStore`` is made on first use and kept, so a long-lived process (the
    model server) pays for reading the configuration and the registry once.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        if not (self.path / CONFIG_FILE).is_file():
            msg = f"{self.path} is not a Feast repository: it has no {CONFIG_FILE}"
            raise UsageError(
                msg, hint="Write one: ductwork export feast DIR --stage S --entity COL"
            )
        self._store: Any = None

    @property
    def store(self) -> Any:
        """The ``feast.FeatureStore`` of the repository."""
        if self._store is None:
            feast: Any = import_optional("feast", extra=EXTRA, feature=FEATURE)
            self._store = feast.FeatureStore(repo_path=str(self.path))
        return self._store

    # -- apply ---------------------------------------------------------------------------------
    def apply(self) -> dict[str, list[str]]:
        """Register the repository's definitions (every ``.py`` file), like ``feast apply``.

        Objects the registry has for the project and the files no longer define are deleted,
        as ``feast apply`` does; the online store tables follow the feature views. Unlike the
        ``feast`` command this neither changes the working directory nor exits the process.
        """
        store = self.store
        from feast.repo_operations import extract_objects_for_apply_delete, get_repo_files

        contents = _repo_contents([_load_module(p) for p in get_repo_files(self.path)])
        registry = store.registry
        to_apply, to_delete, _, _ = extract_objects_for_apply_delete(  # type: ignore[no-untyped-call]
            store.project, registry, contents
        )
        store.apply(to_apply, objects_to_delete=to_delete, partial=False)
        return {
            "applied": sorted(f"{type(o).__name__} {o.name}" for o in to_apply),
            "deleted": sorted(f"{type(o).__name__} {o.name}" for o in to_delete),
        }

    # -- materialize ---------------------------------------------------------------------------
    def materialize(
        self, start: datetime, end: datetime, *, views: Sequence[str] | None = None
    ) -> list[str]:
        """Load the feature values with event times in [start, end] into the online store.

        For each key, the online store keeps its latest value in the window (within the view's
        TTL of ``end``). Returns the views materialized.
        """
        store = self.store
        names = list(views) if views else [v.name for v in store.list_feature_views()]
        store.materialize(start_date=start, end_date=end, feature_views=names)
        return names

    def materialize_incremental(self, end: datetime) -> list[str]:
        """Materialize from where the last materialization of each view ended up to ``end``."""
        store = self.store
        store.materialize_incremental(end_date=end)
        return [v.name for v in store.list_feature_views()]

    # -- read ----------------------------------------------------------------------------------
    def feature_refs(self, features: Sequence[str] | None = None) -> list[str]:
        """``view:feature`` references: every feature of every view, or the ones named (a bare
        name is looked up across the views)."""
        views = {v.name: v for v in self.store.list_feature_views()}
        every = [f"{v.name}:{f.name}" for v in views.values() for f in v.features]
        if features is None:
            return every
        refs: list[str] = []
        for ref in features:
            if ":" in ref:
                if ref not in every:
                    msg = f"the repository has no feature '{ref}'{did_you_mean(ref, every)}"
                    raise UsageError(msg, hint=f"Features: {', '.join(every)}")
                refs.append(ref)
                continue
            found = [r for r in every if r.split(":", 1)[1] == ref]
            if len(found) != 1:
                names = [r.split(":", 1)[1] for r in every]
                why = "is in several views" if found else "is not in any view"
                msg = f"feature '{ref}' {why}{'' if found else did_you_mean(ref, names)}"
                raise UsageError(msg, hint="Name it as view:feature.")
            refs.append(found[0])
        return refs

    def entity_keys(self, refs: Sequence[str]) -> list[str]:
        """The join keys of the views of ``refs``."""
        return list(self.key_schema(refs))

    def key_schema(self, refs: Sequence[str]) -> dict[str, pl.DataType]:
        """Join key -> its Polars type, from the views of ``refs``."""
        views = {v.name: v for v in self.store.list_feature_views()}
        keys: dict[str, pl.DataType] = {}
        for ref in refs:
            for col in views[ref.split(":", 1)[0]].entity_columns:
                keys[col.name] = polars_type(col.dtype) or pl.Object()
        return keys

    def schema(self, refs: Sequence[str]) -> dict[str, pl.DataType]:
        """Feature name -> Polars type, from the views' Fields."""
        views = {v.name: v for v in self.store.list_feature_views()}
        out: dict[str, pl.DataType] = {}
        for ref in refs:
            view_name, name = ref.split(":", 1)
            for f in views[view_name].features:
                if f.name == name:
                    out[name] = polars_type(f.dtype) or pl.Object()
        return out

    def historical_features(
        self,
        entity_df: pl.DataFrame,
        features: Sequence[str] | None = None,
        *,
        timestamp: str | None = None,
    ) -> pl.DataFrame:
        """A point-in-time correct training set: every row of ``entity_df`` and its features.

        ``entity_df`` has the entity key column(s), an event time (``timestamp``, default
        ``event_timestamp`` or its only datetime column; a naive time is UTC) and anything else
        (labels). Each row gets, per view, the latest feature row of its key at or before its
        time and within the view's TTL, never a later one. Every entity row comes back, in its
        order, with its own columns unchanged; where no feature value is in the window the
        features are null (Feast's file store would drop the row) and a warning is logged.
        """
        refs = self.feature_refs(features)
        keys = self.entity_keys(refs)
        ts = _entity_timestamp(entity_df, timestamp)
        missing = [k for k in keys if k not in entity_df.columns]
        if missing:
            msg = f"entity_df has no column '{missing[0]}' (a join key of the features)"
            raise UsageError(msg, hint=f"entity_df needs the keys {keys} and a timestamp.")
        names = [r.split(":", 1)[1] for r in refs]
        clash = [n for n in names if n in entity_df.columns]
        if clash:
            msg = f"entity_df already has a column '{clash[0]}', the name of a feature"
            raise UsageError(msg, hint="Rename or drop it before asking for the feature.")

        at = "__ductwork_ts"
        frame = entity_df.with_columns(_as_utc(entity_df, ts).alias(at))
        pairs = (
            frame.select(*keys, at)
            .filter(pl.all_horizontal([pl.col(c).is_not_null() for c in [*keys, at]]))
            .unique(maintain_order=True)
        )
        schema = self.schema(refs)
        if pairs.height == 0:
            got = pl.DataFrame(schema={**{k: frame.schema[k] for k in keys}, at: _UTC, **schema})
        else:
            # the keys in the types the source has (else dask warns about mismatched merges)
            key_types = self.key_schema(refs)
            query = (
                pairs.with_columns(
                    pl.col(k).cast(key_types[k], strict=False)
                    for k in keys
                    if key_types[k] != pl.Object
                )
                .rename({at: ENTITY_TIMESTAMP})
                .to_pandas()
            )
            result = self.store.get_historical_features(entity_df=query, features=refs).to_df()
            got = _from_pandas(result, [*keys, ENTITY_TIMESTAMP, *names]).rename(
                {ENTITY_TIMESTAMP: at}
            )
            got = got.with_columns(
                *[pl.col(k).cast(frame.schema[k]) for k in keys],
                pl.col(at).dt.cast_time_unit("us").dt.convert_time_zone("UTC"),
                *[pl.col(n).cast(t, strict=False) for n, t in schema.items()],
            ).unique([*keys, at], keep="last", maintain_order=True)
        out = frame.join(got, on=[*keys, at], how="left", nulls_equal=False, maintain_order="left")
        found = out.select(pl.any_horizontal([pl.col(n).is_not_null() for n in names])).to_series()
        empty = int((~found).sum())
        if empty:
            dropped = pairs.height - got.height if pairs.height else 0
            _LOG.warning(
                "%d of %d entity rows have no feature value (no row of their key within the TTL "
                "before their time, or only nulls); their features are null. Feast's file "
                "offline store left out %d of the %d (key, time) pairs it was asked for.",
                empty,
                frame.height,
                max(dropped, 0),
                pairs.height,
            )
        return out.drop(at)

    def online_features(
        self,
        entity_rows: Sequence[Mapping[str, Any]] | pl.DataFrame,
        features: Sequence[str] | None = None,
    ) -> pl.DataFrame:
        """The online store's latest values for each entity key, one row per key, in order.

        A key the online store does not have (never materialized, or its value older than the
        TTL when it was materialized) gets null features.
        """
        refs = self.feature_refs(features)
        rows = entity_rows.to_dicts() if isinstance(entity_rows, pl.DataFrame) else entity_rows
        rows = [dict(r) for r in rows]
        key_types = self.key_schema(refs)
        keys = list(key_types)
        for row in rows:
            missing = [k for k in keys if k not in row]
            if missing:
                msg = f"entity row {row} has no key '{missing[0]}'"
                raise UsageError(msg, hint=f"Each row needs the keys {keys}.")
        schema = self.schema(refs)
        if not rows:
            return pl.DataFrame(schema={**dict.fromkeys(keys, pl.Object()), **schema})
        answer = self.store.get_online_features(features=refs, entity_rows=rows).to_dict()
        columns: dict[str, pl.Series] = {}
        for key in keys:
            columns[key] = pl.Series(key, answer[key], dtype=key_types.get(key), strict=False)
        for name, dtype in schema.items():
            values = answer.get(name, [None] * len(rows))
            columns[name] = pl.Series(name, values, dtype=dtype, strict=False)
        return pl.DataFrame(list(columns.values()))


def apply(repo: str | Path | FeatureRepo) -> dict[str, list[str]]:
    """Register the repository's definitions in its registry (``feast apply``)."""
    return _repo(repo).apply()


def materialize(repo: str | Path | FeatureRepo, start: datetime, end: datetime) -> list[str]:
    """Load the feature values with event times in [start, end] into the online store."""
    return _repo(repo).materialize(start, end)


def historical_features(
    repo: str | Path | FeatureRepo,
    entity_df: pl.DataFrame,
    features: Sequence[str] | None = None,
    *,
    timestamp: str | None = None,
) -> pl.DataFrame:
    """Every entity row with its point-in-time features (see :meth:`FeatureRepo.historical_features`)."""
    return _repo(repo).historical_features(entity_df, features, timestamp=timestamp)


def online_features(
    repo: str | Path | FeatureRepo,
    entity_rows: Sequence[Mapping[str, Any]] | pl.DataFrame,
    features: Sequence[str] | None = None,
) -> pl.DataFrame:
    """The latest online values by entity key (see :meth:`FeatureRepo.online_features`)."""
    return _repo(repo).online_features(entity_rows, features)


def _repo(repo: str | Path | FeatureRepo) -> FeatureRepo:
    return repo if isinstance(repo, FeatureRepo) else FeatureRepo(repo)


def _entity_timestamp(entity_df: pl.DataFrame, timestamp: str | None) -> str:
    if timestamp is not None:
        if timestamp not in entity_df.columns:
            msg = (
                f"entity_df has no column '{timestamp}'{did_you_mean(timestamp, entity_df.columns)}"
            )
            raise UsageError(msg)
        name = timestamp
    elif ENTITY_TIMESTAMP in entity_df.columns:
        name = ENTITY_TIMESTAMP
    else:
        temporal = [
            n for n, t in entity_df.schema.items() if t == pl.Date or isinstance(t, pl.Datetime)
        ]
        if len(temporal) != 1:
            msg = "entity_df needs the time of each row: an event_timestamp column"
            raise UsageError(msg, hint="Name it event_timestamp, or pass timestamp='column'.")
        name = temporal[0]
    dtype = entity_df.schema[name]
    if not (dtype == pl.Date or isinstance(dtype, pl.Datetime)):
        msg = f"entity_df column '{name}' is {dtype}, not a datetime"
        raise UsageError(msg, hint="Parse it first: pl.col(name).str.to_datetime().")
    return name


def _as_utc(frame: pl.DataFrame, name: str) -> pl.Expr:
    return _utc(pl.col(name), frame.schema[name])


def _from_pandas(frame: pd.DataFrame, columns: list[str]) -> pl.DataFrame:
    return pl.from_pandas(frame[columns].reset_index(drop=True))


def _load_module(path: Path) -> Any:
    """Import a repository file under a name of its own (no sys.path or working directory)."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = f"_ductwork_feast_repo_{digest}_{feast_name(path.stem)}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        msg = f"cannot import the Feast definitions in {path}"
        raise UsageError(msg)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        sys.modules.pop(name, None)
        raise
    return module


def _repo_contents(modules: list[Any]) -> Any:
    """The Feast objects the modules define, as ``feast apply`` collects them (parse_repo)."""
    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView
    from feast.data_source import DataSource
    from feast.feature_view import DUMMY_ENTITY
    from feast.repo_contents import RepoContents
    from feast.stream_feature_view import StreamFeatureView

    found: dict[str, list[Any]] = {
        "data_sources": [],
        "feature_views": [],
        "on_demand_feature_views": [],
        "stream_feature_views": [],
        "entities": [],
        "feature_services": [],
    }

    def add(kind: str, obj: Any) -> None:
        if not any(obj is seen for seen in found[kind]):
            found[kind].append(obj)

    for module in modules:
        for attr in sorted(vars(module)):
            obj = getattr(module, attr)
            if isinstance(obj, DataSource):
                add("data_sources", obj)
            elif isinstance(obj, StreamFeatureView):
                add("stream_feature_views", obj)
            elif isinstance(obj, FeatureView):
                add("feature_views", obj)
                if obj.batch_source is not None:
                    add("data_sources", obj.batch_source)
            elif isinstance(obj, OnDemandFeatureView):
                add("on_demand_feature_views", obj)
            elif isinstance(obj, Entity):
                add("entities", obj)
            elif isinstance(obj, FeatureService):
                add("feature_services", obj)
    found["entities"].append(DUMMY_ENTITY)
    return RepoContents(projects=[], label_views=[], permissions=[], **found)
