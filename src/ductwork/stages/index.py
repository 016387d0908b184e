"""The ``index`` stage kind: load an embeddings table into a vector collection.

A load kind: the collection is made to hold exactly the input's rows — new and changed rows
are upserted (by an id derived from the key, so re-running never duplicates), rows that left
the input are deleted, unchanged rows are not touched — and the main output is a manifest
(JSON) that ``ductwork search`` and the ``generate`` stage's retrieval read to find the
collection and the model to embed queries with.

By default Qdrant runs in local mode in a directory of the store (``<store>/vectors/qdrant/
<collection>``); ``url`` points at a Qdrant server instead; ``backend: lancedb`` (an optional
extra) keeps a LanceDB table in ``<store>/vectors/lancedb/<collection>``. A local collection is
part of the stage's fingerprint (deleting the directory re-runs the stage); a server's state
cannot be, so with ``url`` the stage runs every time (writing nothing when nothing changed).
See ``docs/stages/index.md``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ductwork.core.contract import (
    ArtifactInfo,
    Inputs,
    Output,
    StageContext,
    StageKind,
    StageParams,
)
from ductwork.errors import DataError, did_you_mean

if TYPE_CHECKING:
    import polars as pl

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_EXAMPLES = 5
_NOT_PAYLOAD = ("embedding", "model")


class IndexParams(StageParams):
    """Params of ``kind: index``."""

    backend: Literal["qdrant", "lancedb"] = Field(
        default="qdrant", description="qdrant, or lancedb (the optional 'lancedb' extra)."
    )
    collection: str | None = Field(
        default=None, description="The collection name (default: the stage's name)."
    )
    url: str | None = Field(
        default=None,
        description="A Qdrant server, e.g. http://127.0.0.1:6333 (default: local mode in the store).",
    )
    api_key_env: str | None = Field(
        default=None, description="The env var holding the server's API key (never stored)."
    )
    distance: Literal["cosine", "dot", "euclid"] = Field(
        default="cosine", description="The similarity searches rank by."
    )
    payload: list[str] | None = Field(
        default=None,
        description="Columns stored with each vector (default: all but embedding, model).",
    )
    key: str | None = Field(
        default=None, description="The id column (default: the first column, embed's key)."
    )
    batch_size: int = Field(default=256, ge=1, le=10_000, description="Points per upsert call.")
    timeout_s: float = Field(
        default=30.0, gt=0, description="Server timeout; how long to wait for a locked local dir."
    )

    @field_validator("payload", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("collection")
    @classmethod
    def _collection_name(cls, value: str | None) -> str | None:
        if value is not None and not _NAME.match(value):
            msg = (
                f"collection '{value}' is not a valid name: letters, digits, '_', '-', '.', "
                "starting with a letter or digit"
            )
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> IndexParams:
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            msg = f"url '{self.url}' is not an http(s) URL of a Qdrant server"
            raise ValueError(msg)
        if self.url is not None and self.backend == "lancedb":
            msg = "'url' is for a Qdrant server; a LanceDB index lives in the store"
            raise ValueError(msg)
        if self.api_key_env is not None and self.url is None:
            msg = "'api_key_env' is for a Qdrant server ('url'); local mode needs no key"
            raise ValueError(msg)
        if self.payload is not None:
            for col in self.payload:
                if col.startswith("_dw_"):
                    msg = f"payload: '{col}': names starting with '_dw_' are reserved"
                    raise ValueError(msg)
        return self

    def collection_name(self, stage: str) -> str:
        return self.collection or stage


class Index(StageKind[IndexParams]):
    """Sync an embeddings table into a Qdrant collection (local or server) or a LanceDB table."""

    name: ClassVar[str] = "index"
    version: ClassVar[str] = "1"
    Params: ClassVar[type[StageParams]] = IndexParams
    outputs: ClassVar[dict[str, Output]] = {
        "index": Output(
            "json",
            description="backend, location, collection, dims, distance, model, count, "
            "upserted, deleted, unchanged",
        ),
    }
    summary: ClassVar[str] = (
        "load embeddings into a vector collection (Qdrant, LanceDB), idempotently"
    )

    def source_stamp(self, params: IndexParams, ctx: StageContext) -> str | None:
        """'' while the local collection is as this stage left it for this input, else None.

        None (run every time) for a server, whose state is not ours to fingerprint, and for a
        local collection that is missing, was changed since, or holds another input's rows.
        The empty stamp makes a run after an ``always run`` one a cache hit.
        """
        if params.url is not None:
            return None
        from ductwork.ai.vectors import STATE_FILE, local_path, local_state

        path = local_path(params.backend, ctx.store_root, params.collection_name(ctx.stage))
        try:
            recorded = json.loads((path / STATE_FILE).read_text())
        except (OSError, ValueError):
            return None
        source = next(iter(ctx.input_infos.values()), None)
        if source is None or recorded.get("input") != source.sha256:
            return None
        return "" if recorded.get("state") == local_state(path) else None

    def run(self, params: IndexParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        from ductwork.errors import import_optional

        feature = f"stage '{ctx.stage}' (index, backend: {params.backend})"
        if params.backend == "lancedb":
            import_optional("lancedb", extra="lancedb", feature=feature)
        else:
            import_optional("qdrant_client", extra="ai", feature=feature)
        import numpy as np

        from ductwork.ai import vectors as vec

        collection = params.collection_name(ctx.stage)
        if not _NAME.match(collection):
            msg = f"stage '{ctx.stage}': '{collection}' is not a valid collection name"
            raise DataError(msg, hint="Set 'collection' to letters, digits, '_', '-', '.'.")
        source = inputs.only()
        frame = source.frame()
        key, payload_cols = _columns(ctx.stage, params, frame)
        _require_key(ctx.stage, key, frame)
        matrix = _vectors(ctx.stage, key, frame)
        model = _model(ctx.stage, frame)
        model_id = None
        if model is not None:
            from ductwork.ai.embeddings import resolve_model

            model_id = resolve_model(model, project_dir=ctx.project_dir).id

        payload_frame = _json_safe(frame.select(payload_cols))
        keys = frame[key].to_list()
        ids: list[str] = []
        hashes: list[str] = []
        payloads: list[dict[str, Any]] = []
        for i, (k, row) in enumerate(zip(keys, payload_frame.iter_rows(named=True), strict=True)):
            row[vec.KEY_FIELD] = str(k)
            h = vec.row_hash(matrix[i].tobytes(), row)
            row[vec.HASH_FIELD] = h
            ids.append(vec.point_id(k))
            hashes.append(h)
            payloads.append(row)

        local: Path | None = None
        if params.backend == "lancedb":
            local = vec.local_path("lancedb", ctx.store_root, collection)
            result = vec.sync_lancedb(
                local,
                collection,
                keys=[str(k) for k in keys],
                hashes=hashes,
                vectors=matrix,
                payload=payload_frame,
                batch_size=params.batch_size,
                progress=ctx.progress,
            )
            location = local.relative_to(ctx.store_root).as_posix()
        else:
            if params.url is not None:
                target = vec.QdrantTarget(
                    url=params.url, api_key_env=params.api_key_env, timeout_s=params.timeout_s
                )
            else:
                target = vec.QdrantTarget.local(ctx.store_root, collection, params.timeout_s)
                local = target.path
            result = vec.sync_qdrant(
                target,
                collection,
                ids=ids,
                hashes=hashes,
                vectors=matrix,
                payloads=payloads,
                distance=params.distance,
                batch_size=params.batch_size,
                progress=ctx.progress,
            )
            location = target.describe(ctx.store_root)
        norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
        manifest = {
            "backend": params.backend,
            "location": location,
            "url": None if params.url is None else vec.redact_url(params.url),
            "api_key_env": params.api_key_env,
            "collection": collection,
            "dims": int(matrix.shape[1]),
            "distance": params.distance,
            "model": model,
            "model_id": model_id,
            "normalized": bool(np.all(np.abs(norms - 1.0) < 1e-3)),
            "key": key,
            "payload": {c: str(t) for c, t in frame.select(payload_cols).schema.items()},
            "count": result.count,
            "upserted": result.upserted,
            "deleted": result.deleted,
            "unchanged": result.unchanged,
            "recreated": result.recreated,
        }
        if local is not None:
            state = {"input": source.info.sha256, "state": vec.local_state(local)}
            (local / vec.STATE_FILE).write_text(json.dumps(state))
        ctx.metric(
            rows=frame.height,
            count=result.count,
            upserted=result.upserted,
            deleted=result.deleted,
            unchanged=result.unchanged,
            recreated=result.recreated,
        )
        ctx.log(
            f"index: {collection}: {result.upserted} upserted, {result.deleted} deleted, "
            f"{result.unchanged} unchanged ({manifest['location']})"
        )
        return {"index": manifest}

    def check(
        self,
        params: IndexParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        manifest = json.loads(Path(outputs["index"].path).read_text())
        rows = inputs.only().rows
        problems = []
        if rows is not None and manifest["count"] != rows:
            problems.append(
                f"count: the collection holds {manifest['count']:,} points, the input {rows:,} rows"
            )
        if rows is not None and manifest["upserted"] + manifest["unchanged"] != rows:
            problems.append(
                f"upserted ({manifest['upserted']:,}) + unchanged ({manifest['unchanged']:,}) "
                f"!= input rows ({rows:,})"
            )
        return problems


# ------------------------------------------------------------------------------ input checks
def _columns(stage: str, params: IndexParams, frame: pl.DataFrame) -> tuple[str, list[str]]:
    names = frame.columns
    if "embedding" not in names:
        msg = f"stage '{stage}': the input has no 'embedding' column{did_you_mean('embedding', names)}"
        raise DataError(msg, hint="Index the output of an embed stage.")
    key = params.key or names[0]
    if key not in names:
        msg = f"stage '{stage}': key column '{key}' is not in the input{did_you_mean(key, names)}"
        raise DataError(msg, hint=f"Input columns: {', '.join(names)}")
    if key == "embedding":
        msg = f"stage '{stage}': the key column cannot be 'embedding'"
        raise DataError(msg, hint="Set 'key' to the id column embed wrote first.")
    if params.payload is None:
        payload = [c for c in names if c not in _NOT_PAYLOAD]
    else:
        payload = list(params.payload)
        for col in payload:
            if col not in names or col == "embedding":
                msg = f"stage '{stage}': payload column '{col}' is not in the input{did_you_mean(col, names)}"
                raise DataError(msg, hint=f"Input columns: {', '.join(names)}")
    reserved = [c for c in payload if c.startswith("_dw_")]
    if reserved:
        msg = f"stage '{stage}': payload column(s) {reserved}: names starting with '_dw_' are reserved"
        raise DataError(msg, hint="Rename them upstream.")
    return key, payload


def _require_key(stage: str, key: str, frame: pl.DataFrame) -> None:
    import polars as pl

    if frame[key].null_count():
        msg = f"stage '{stage}': key column '{key}' has {frame[key].null_count():,} null value(s)"
        raise DataError(msg, hint="Every row needs a key (the point's id).")
    dupes = frame.group_by(key).agg(pl.len().alias("n")).filter(pl.col("n") > 1).sort(key)
    if dupes.height:
        shown = ", ".join(repr(v) for v in dupes[key].head(_EXAMPLES).to_list())
        msg = f"stage '{stage}': key column '{key}' is not unique: {shown}"
        raise DataError(msg, hint="A key names one point; two rows would overwrite each other.")


def _vectors(stage: str, key: str, frame: pl.DataFrame) -> Any:
    import numpy as np
    import polars as pl

    col = frame["embedding"]
    if col.null_count():
        missing = frame.filter(col.is_null())[key].head(_EXAMPLES).to_list()
        msg = f"stage '{stage}': {col.null_count():,} row(s) have no embedding ({key} {missing})"
        raise DataError(msg)
    dtype = col.dtype
    if isinstance(dtype, pl.List):
        lengths = col.list.len().unique().to_list()
        if len(lengths) > 1:
            msg = f"stage '{stage}': embeddings have different sizes: {sorted(lengths)[:_EXAMPLES]}"
            raise DataError(msg, hint="Every vector of a collection has the same size.")
        col = col.list.to_array(int(lengths[0]) if lengths else 0)
        dtype = col.dtype
    if not isinstance(dtype, pl.Array) or not dtype.inner.is_numeric():
        msg = f"stage '{stage}': column 'embedding' is {dtype}, not an array of floats"
        raise DataError(msg, hint="Index the output of an embed stage.")
    dims = int(dtype.size)
    matrix = col.cast(pl.Array(pl.Float32, dims)).to_numpy()
    out = np.ascontiguousarray(matrix, dtype=np.float32).reshape(frame.height, dims)
    if frame.height and not np.isfinite(out).all():
        msg = f"stage '{stage}': some embeddings contain NaN or infinite values"
        raise DataError(msg)
    return out


def _model(stage: str, frame: pl.DataFrame) -> str | None:
    if "model" not in frame.columns:
        return None
    models = frame["model"].drop_nulls().unique().sort().to_list()
    if len(models) > 1:
        msg = f"stage '{stage}': the input mixes embedding models: {models[:_EXAMPLES]}"
        raise DataError(msg, hint="One collection, one model: index each model separately.")
    return str(models[0]) if models else None


def _json_safe(frame: pl.DataFrame) -> pl.DataFrame:
    """Payload values Qdrant can store as JSON: dates as ISO text, no NaN, no bytes."""
    import polars as pl

    exprs = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if dtype.is_temporal() or isinstance(dtype, pl.Categorical | pl.Enum):
            exprs.append(col.cast(pl.String))
        elif isinstance(dtype, pl.Decimal):
            exprs.append(col.cast(pl.Float64))
        elif dtype.is_float():
            exprs.append(col.fill_nan(None))
        elif dtype == pl.Binary:
            msg = f"payload column '{name}' is binary, which a JSON payload cannot hold"
            raise DataError(msg, hint="Leave it out of 'payload' or encode it as text upstream.")
    return frame.with_columns(exprs) if exprs else frame
