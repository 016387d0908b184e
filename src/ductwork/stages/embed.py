"""The ``embed`` stage kind: one sentence-embedding vector per row of a table.

The text of a row is a column (``text: body``) or a template of columns (``template: "{title}:
{body}"``, ``str.format`` field names, nothing else). The output keeps the row order and the
key, adds ``text_sha256`` (what the index compares to skip unchanged rows), ``model`` (what the
index and ``ductwork search`` embed queries with) and ``embedding``, a fixed-size float32 array.

Incremental by content: vectors are cached in the store by sha256(model id, normalize, text),
so a re-run encodes only texts it has never seen, and a run whose texts are all cached never
loads the model (torch is not even imported). The same texts give the same bytes whether they
came from the cache or the model, so downstream stages stay cached. See ``docs/stages/embed.md``.
"""

from __future__ import annotations

import hashlib
import string
import time
from collections.abc import Mapping
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

DEFAULT_MODEL = "all-MiniLM-L6-v2"  # = ductwork.ai.embeddings.DEFAULT_MODEL (not imported here)
RESERVED = ("text_sha256", "model", "embedding")
_EXAMPLES = 5


def template_fields(template: str) -> list[tuple[str, str | None]]:
    """(literal, column) pieces of a template; raises ValueError on anything but ``{column}``."""
    pieces: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        msg = f"template {template!r} is not a valid format string: {exc} (write {{{{ for a literal {{)"
        raise ValueError(msg) from None
    for literal, field, spec, conversion in parsed:
        if field is None:
            pieces.append((literal, None))
            continue
        if not field or field.isdigit():
            msg = f"template {template!r}: every {{}} needs a column name, e.g. {{title}}"
            raise ValueError(msg)
        if spec or conversion or any(c in field for c in ".["):
            msg = (
                f"template {template!r}: '{{{field}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}}' — fields are plain column names like {{title}} "
                "(no attributes, indexes, conversions or format specs)"
            )
            raise ValueError(msg)
        pieces.append((literal, field))
    return pieces


class EmbedParams(StageParams):
    """Params of ``kind: embed``."""

    text: str | None = Field(default=None, description="The column holding the text to embed.")
    template: str | None = Field(
        default=None,
        description="Or: the text built from columns, e.g. '{title}: {body}' (null -> empty).",
    )
    key: str = Field(description="A column that identifies each row (unique, not null).")
    model: str = Field(
        default=DEFAULT_MODEL,
        description="all-MiniLM-L6-v2 (bundled), a local model directory, or a model name "
        "already in the Hugging Face cache. Never downloaded at run time.",
    )
    batch_size: int = Field(default=64, ge=1, le=4096, description="Texts per model call.")
    normalize: bool = Field(default=True, description="Scale every vector to length 1.")
    keep: list[str] = Field(
        default_factory=list, description="Columns copied to the output (the index payload)."
    )
    device: Literal["cpu"] = Field(default="cpu", description="Where the model runs.")

    @field_validator("keep", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("template")
    @classmethod
    def _template_parses(cls, value: str | None) -> str | None:
        if value is not None and not any(col for _, col in template_fields(value)):
            msg = f"template {value!r} names no column; use {{column}} fields"
            raise ValueError(msg)
        return value

    @model_validator(mode="after")
    def _one_text_source(self) -> EmbedParams:
        if (self.text is None) == (self.template is None):
            msg = "give exactly one of 'text' (a column) or 'template' (e.g. '{title}: {body}')"
            raise ValueError(msg)
        for col in self.keep:
            if col in RESERVED:
                msg = f"keep: '{col}' is a column embed writes itself; rename it first"
                raise ValueError(msg)
        if len(set(self.keep)) != len(self.keep):
            msg = f"keep lists a column twice: {self.keep}"
            raise ValueError(msg)
        return self

    def text_columns(self) -> list[str]:
        if self.text is not None:
            return [self.text]
        assert self.template is not None  # _one_text_source
        return list(dict.fromkeys(c for _, c in template_fields(self.template) if c))


class Embed(StageKind[EmbedParams]):
    """Embed a text column (or a template of columns) with a sentence-transformers model."""

    name: ClassVar[str] = "embed"
    version: ClassVar[str] = "1"
    Params: ClassVar[type[StageParams]] = EmbedParams
    outputs: ClassVar[dict[str, Output]] = {
        "embeddings": Output(
            "table", description="key, keep columns, text_sha256, model, embedding (float32[dims])"
        ),
    }
    summary: ClassVar[str] = "embed text with a sentence-transformers model, incrementally"

    def run(self, params: EmbedParams, inputs: Inputs, ctx: StageContext) -> dict[str, Any]:
        from ductwork.ai import require_ai

        require_ai(f"stage '{ctx.stage}' (embed)", module="numpy")
        import numpy as np
        import polars as pl

        from ductwork.ai import embeddings as emb

        lf = inputs.only().lazy()
        names = lf.collect_schema().names()
        _require_columns(ctx.stage, params, names)
        frame = lf.select(
            list(dict.fromkeys([params.key, *params.keep, *params.text_columns()]))
        ).collect()
        _require_key(ctx.stage, params.key, frame)
        texts = _texts(ctx.stage, params, frame)

        ref = emb.resolve_model(params.model, project_dir=ctx.project_dir)
        cache = emb.VectorCache(ctx.store_root, ref.id, normalize=params.normalize)
        keys = [cache.key(t) for t in texts]
        first: dict[bytes, int] = {}  # cache key -> position of its first row
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        cached = cache.get_many(first)
        missing = [k for k in first if k not in cached]

        load_s = encode_s = 0.0
        dims = _dims_of(cached) if cached else cache.dims() if not missing else None
        loaded = bool(missing) or dims is None  # dims is None: an empty input, an empty cache
        if loaded:
            model, load_s = emb.load_model(ref, params.device)
            dims = emb.dimension(model)
        vectors: dict[bytes, bytes] = dict(cached)
        if missing:
            ctx.log(f"embed: {len(missing):,} new text(s) of {len(first):,} with {ref.id}")
            started = time.perf_counter()
            new = emb.encode(
                model,
                [texts[first[k]] for k in missing],
                batch_size=params.batch_size,
                normalize=params.normalize,
                progress=ctx.progress,
            )
            encode_s = time.perf_counter() - started
            dims = int(new.shape[1])
            fresh = [(k, new[i].tobytes()) for i, k in enumerate(missing)]
            cache.put_many(fresh, dims=dims)
            vectors.update(fresh)
        assert dims is not None
        if cached and not missing:
            ctx.progress(len(first), len(first), "texts")

        matrix = np.frombuffer(b"".join(vectors[k] for k in keys), dtype=np.float32)
        matrix = matrix.reshape(len(keys), dims)
        out = frame.select(list(dict.fromkeys([params.key, *params.keep]))).with_columns(
            pl.Series("text_sha256", [hashlib.sha256(t.encode()).hexdigest() for t in texts]),
            pl.lit(params.model, dtype=pl.String).alias("model"),
            pl.Series("embedding", matrix, dtype=pl.Array(pl.Float32, dims)),
        )
        ctx.metric(
            rows=frame.height,
            distinct_texts=len(first),
            embedded=len(missing),
            reused=len(first) - len(missing),
            model=params.model,
            model_id=ref.id,
            dims=dims,
            model_loaded=loaded,
            model_load_s=round(load_s, 3),
            encode_s=round(encode_s, 3),
        )
        if missing and encode_s > 0:
            ctx.metric(texts_per_s=round(len(missing) / encode_s, 1))
        return {"embeddings": out}

    def check(
        self,
        params: EmbedParams,
        inputs: Inputs,
        outputs: Mapping[str, ArtifactInfo],
        ctx: StageContext,
    ) -> list[str]:
        rows_in, rows_out = inputs.only().rows, outputs["embeddings"].rows
        if rows_in is not None and rows_out is not None and rows_in != rows_out:
            return [f"rows: the input has {rows_in:,} rows but {rows_out:,} were embedded"]
        return []


def _dims_of(cached: Mapping[bytes, bytes]) -> int:
    return len(next(iter(cached.values()))) // 4


# ------------------------------------------------------------------------------ run errors
def _require_columns(stage: str, params: EmbedParams, names: list[str]) -> None:
    wanted = [("key", params.key)]
    if params.text is not None:
        wanted.append(("text", params.text))
    else:
        wanted += [("template field", c) for c in params.text_columns()]
    wanted += [("keep", c) for c in params.keep]
    for what, col in wanted:
        if col not in names:
            msg = f"stage '{stage}': {what} column '{col}' is not in the input{did_you_mean(col, names)}"
            raise DataError(msg, hint=f"Input columns: {', '.join(names)}")
    if params.key in RESERVED:
        msg = f"stage '{stage}': key column '{params.key}' clashes with a column embed writes"
        raise DataError(msg, hint="Rename it in an upstream transform.")


def _require_key(stage: str, key: str, frame: pl.DataFrame) -> None:
    import polars as pl

    nulls = frame[key].null_count()
    if nulls:
        msg = f"stage '{stage}': key column '{key}' has {nulls:,} null value(s)"
        raise DataError(msg, hint="Every row needs a key: filter or fill them upstream.")
    dupes = (
        frame.group_by(key)
        .agg(pl.len().alias("n"))
        .filter(pl.col("n") > 1)
        .sort(["n", key], descending=[True, False])
    )
    if dupes.height:
        shown = ", ".join(f"{v!r} ({n} rows)" for v, n in dupes.head(_EXAMPLES).iter_rows())
        more = f" and {dupes.height - _EXAMPLES:,} more" if dupes.height > _EXAMPLES else ""
        msg = f"stage '{stage}': key column '{key}' is not unique: {shown}{more}"
        raise DataError(msg, hint="The key identifies a row's vector in the index: dedupe first.")


def _texts(stage: str, params: EmbedParams, frame: pl.DataFrame) -> list[str]:
    import polars as pl

    if params.text is not None:
        column = frame[params.text]
        if column.null_count():
            keys = frame.filter(column.is_null())[params.key]
            shown = ", ".join(repr(k) for k in keys.head(_EXAMPLES).to_list())
            more = f" and {len(keys) - _EXAMPLES:,} more" if len(keys) > _EXAMPLES else ""
            msg = (
                f"stage '{stage}': text column '{params.text}' is null on {len(keys):,} row(s): "
                f"{params.key} {shown}{more}"
            )
            raise DataError(msg, hint="Filter them out or fill them upstream (e.g. coalesce).")
        texts = column.cast(pl.String)
    else:
        assert params.template is not None
        parts: list[pl.Expr] = []
        for literal, col in template_fields(params.template):
            if literal:
                parts.append(pl.lit(literal, dtype=pl.String))
            if col is not None:
                parts.append(pl.col(col).cast(pl.String).fill_null(""))
        texts = frame.select(pl.concat_str(parts).alias("text"))["text"]
    return texts.to_list()
