"""The index stage and search: real MiniLM vectors in a real Qdrant local-mode directory."""

from __future__ import annotations

import importlib.util
import itertools
import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("sentence_transformers")
pytest.importorskip("qdrant_client")

import polars as pl
from click.testing import CliRunner
from pydantic import ValidationError
from qdrant_client import QdrantClient, models

import ductwork as dw
from ductwork import api
from ductwork.ai import vectors as vec
from ductwork.core.contract import ArtifactInfo, StageContext
from ductwork.errors import DataError, MissingExtra, SourceError, UsageError
from ductwork.stages.index import Index, IndexParams
from ductwork.testing import StageOutcome, run_stage
from tests.unit.test_embed import corpus

# query -> the document it must find first (obvious to a reader, not by shared words alone)
QUERIES = {
    "delete a folder and everything inside it": "shutil.rmtree",
    "write an object out as a JSON string": "json.dumps",
    "put the items of a list in random order": "random.shuffle",
    "does February have 29 days this year": "calendar.isleap",
    "create a scratch directory that nobody else uses": "tempfile.mkdtemp",
    "show a web page to the user": "webbrowser.open",
}


@pytest.fixture(scope="module")
def docs() -> pl.DataFrame:
    return corpus()


@pytest.fixture(scope="module")
def embedded(docs: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    """The embed stage's output for the corpus (the model loaded once for the module)."""
    tmp = tmp_path_factory.mktemp("embed")
    params = {"text": "doc", "key": "id", "keep": ["module", "name"]}
    out = run_stage("embed", params, {"docs": docs}, tmp, stage="embed")
    frame: pl.DataFrame = out.values["embeddings"]
    return frame


def index(
    table: pl.DataFrame, project: Path, work: Path, stage: str = "docs", **params: Any
) -> StageOutcome:
    out = run_stage("index", params, {"embed": table}, work, stage=stage, project_dir=project)
    assert out.violations == []
    return out


def store(project: Path) -> Path:
    return project / ".ductwork"


def points(project: Path, collection: str = "docs") -> dict[str, dict[str, Any]]:
    """Every point of a local collection: id -> payload (opened and closed again)."""
    with vec.QdrantTarget.local(store(project), collection).client() as client:
        found, _ = client.scroll(collection, limit=10_000, with_payload=True)
    return {str(p.id): dict(p.payload or {}) for p in found}


# ------------------------------------------------------------------------------ sync
def test_index_loads_every_row_with_a_deterministic_id(
    embedded: pl.DataFrame, tmp_path: Path
) -> None:
    out = index(embedded, tmp_path, tmp_path / "w")
    manifest = out.values["index"]
    n = embedded.height
    assert manifest == {
        "backend": "qdrant",
        "location": "vectors/qdrant/docs",
        "url": None,
        "api_key_env": None,
        "collection": "docs",
        "dims": 384,
        "distance": "cosine",
        "model": "all-MiniLM-L6-v2",
        "model_id": manifest["model_id"],
        "normalized": True,
        "key": "id",
        "payload": {"id": "String", "module": "String", "name": "String", "text_sha256": "String"},
        "count": n,
        "upserted": n,
        "deleted": 0,
        "unchanged": 0,
        "recreated": False,
    }
    assert manifest["model_id"].startswith("all-MiniLM-L6-v2@")
    stored = points(tmp_path)
    assert set(stored) == {str(uuid.uuid5(vec._NAMESPACE, k)) for k in embedded["id"]}
    payload = stored[vec.point_id("json.dumps")]
    assert payload["_dw_key"] == "json.dumps"
    assert (payload["module"], payload["name"]) == ("json", "dumps")
    assert "embedding" not in payload and "model" not in payload


def test_a_rerun_with_the_same_rows_writes_nothing(embedded: pl.DataFrame, tmp_path: Path) -> None:
    index(embedded, tmp_path, tmp_path / "w1")
    path = store(tmp_path) / "vectors" / "qdrant" / "docs"
    before = vec.local_state(path)
    again = index(embedded, tmp_path, tmp_path / "w2").values["index"]
    assert (again["upserted"], again["deleted"], again["unchanged"]) == (0, 0, embedded.height)
    assert vec.local_state(path) == before  # not a byte rewritten


def test_changed_added_and_removed_rows_are_synced(embedded: pl.DataFrame, tmp_path: Path) -> None:
    index(embedded, tmp_path, tmp_path / "w1")
    removed = ["re.sub", "glob.glob", "zlib.compress"]
    extra = embedded.filter(pl.col("id") == "math.sqrt").with_columns(id=pl.lit("math.sqrt2"))
    edited = pl.concat(
        [
            embedded.filter(~pl.col("id").is_in(removed)).with_columns(
                # a payload-only change (same text, same vector) is a change too
                module=pl.when(pl.col("id") == "json.loads")
                .then(pl.lit("JSON"))
                .otherwise("module")
            ),
            extra,
        ]
    )
    out = index(edited, tmp_path, tmp_path / "w2").values["index"]
    assert (out["upserted"], out["deleted"]) == (2, 3)
    assert out["unchanged"] == edited.height - 2
    assert out["count"] == edited.height
    stored = points(tmp_path)
    assert {p["_dw_key"] for p in stored.values()} == set(edited["id"])
    assert stored[vec.point_id("json.loads")]["module"] == "JSON"


def test_a_new_distance_recreates_the_collection(embedded: pl.DataFrame, tmp_path: Path) -> None:
    index(embedded, tmp_path, tmp_path / "w1")
    out = index(embedded, tmp_path, tmp_path / "w2", distance="dot").values["index"]
    assert out["recreated"] is True
    assert (out["upserted"], out["count"]) == (embedded.height, embedded.height)
    with vec.QdrantTarget.local(store(tmp_path), "docs").client() as client:
        params = client.get_collection("docs").config.params.vectors
    assert isinstance(params, models.VectorParams)
    assert params.distance == models.Distance.DOT


def test_payload_selects_columns(embedded: pl.DataFrame, tmp_path: Path) -> None:
    out = index(embedded, tmp_path, tmp_path / "w", payload="module").values["index"]
    assert out["payload"] == {"module": "String"}
    payload = points(tmp_path)[vec.point_id("html.escape")]
    assert {k for k in payload if not k.startswith("_dw_")} == {"module"}


# ------------------------------------------------------------------------------ search
@pytest.fixture(scope="module")
def indexed(embedded: pl.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    project = tmp_path_factory.mktemp("indexed")
    out = index(embedded, project, project / "w")
    return {"manifest": out.values["index"], "store": store(project), "project": project}


def test_search_finds_the_document_that_means_the_query(indexed: dict[str, Any]) -> None:
    results = vec.search(indexed["manifest"], list(QUERIES), k=3, store_root=indexed["store"])
    top = [hits[0].id for hits in results]
    assert top == list(QUERIES.values())
    assert all(len(hits) == 3 for hits in results)
    assert all(a.score >= b.score for hits in results for a, b in itertools.pairwise(hits))
    first = results[0][0]
    assert first.payload["module"] == "shutil" and "_dw_hash" not in first.payload
    assert vec.recall_at_k(results, list(QUERIES.values()), k=1) == 1.0
    wrong = ["not.indexed"] * len(QUERIES)
    assert vec.recall_at_k(results, wrong, k=3) == 0.0


def test_where_keeps_matching_rows_only(indexed: dict[str, Any]) -> None:
    query = ["write an object out as a JSON string"]
    [hits] = vec.search(
        indexed["manifest"], query, k=10, store_root=indexed["store"], where={"module": "math"}
    )
    assert hits and {h.payload["module"] for h in hits} == {"math"}
    assert len(hits) == 4
    [either] = vec.search(
        indexed["manifest"],
        query,
        k=10,
        store_root=indexed["store"],
        where={"module": ["json", "pprint"]},
    )
    assert [h.id for h in either][:1] == ["json.dumps"]
    assert {h.payload["module"] for h in either} == {"json", "pprint"}
    with pytest.raises(DataError, match=r"'modul' is not a payload field .* did you mean 'module'"):
        vec.search(indexed["manifest"], query, store_root=indexed["store"], where={"modul": "x"})


def test_a_manifest_works_from_a_fresh_process(indexed: dict[str, Any], tmp_path: Path) -> None:
    manifest = tmp_path / "index.json"
    manifest.write_text(json.dumps(indexed["manifest"]))
    code = textwrap.dedent(
        f"""
        import json
        from pathlib import Path
        from ductwork.ai.vectors import search
        manifest = json.loads(Path({str(manifest)!r}).read_text())
        hits = search(manifest, ["make a directory for temporary files"], k=2,
                      store_root=Path({str(indexed["store"])!r}))
        print(json.dumps([h.to_dict() for h in hits[0]]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    hits = json.loads(proc.stdout.splitlines()[-1])
    assert hits[0]["id"] == "tempfile.mkdtemp"
    assert hits[0]["payload"]["name"] == "mkdtemp"


def test_a_search_waits_for_a_locked_local_directory(indexed: dict[str, Any]) -> None:
    target = vec.target_of(indexed["manifest"], indexed["store"])
    holder = QdrantClient(path=str(target.path))
    releaser = threading.Timer(0.5, holder.close)
    releaser.start()
    started = time.monotonic()
    [hits] = vec.search(indexed["manifest"], ["web browser"], k=1, store_root=indexed["store"])
    assert time.monotonic() - started >= 0.4  # it waited for the lock, then searched
    assert hits[0].id == "webbrowser.open"
    releaser.join()


def test_a_lock_held_too_long_is_a_clear_error(indexed: dict[str, Any]) -> None:
    path = indexed["store"] / indexed["manifest"]["location"]
    holder = QdrantClient(path=str(path))
    try:
        with (
            pytest.raises(
                SourceError, match=r"stayed open in another process or thread for 0\.2 s"
            ),
            vec.QdrantTarget(path=path, timeout_s=0.2).client(),
        ):
            pass
    finally:
        holder.close()


def test_a_changed_model_is_refused_at_search(indexed: dict[str, Any]) -> None:
    stale = {**indexed["manifest"], "model_id": "all-MiniLM-L6-v2@000000000000"}
    with pytest.raises(DataError, match="but the index was built with all-MiniLM-L6-v2@0000"):
        vec.search(stale, ["x"], store_root=indexed["store"])


# ------------------------------------------------------------------------------ fingerprint
def _ctx(project: Path, sha: str, stage: str = "docs") -> StageContext:
    info = ArtifactInfo(sha256=sha, type="table", bytes=0)
    return StageContext(
        stage=stage, run_id="t", project_dir=project, work_dir=project, input_infos={"e": info}
    )


def test_source_stamp_follows_the_local_collection(embedded: pl.DataFrame, tmp_path: Path) -> None:
    kind, params = Index(), IndexParams()
    out = index(embedded, tmp_path, tmp_path / "w")
    sha = out.infos["index"].sha256  # any sha: the marker records the input's
    input_sha = json.loads((store(tmp_path) / "vectors/qdrant/docs" / vec.STATE_FILE).read_text())
    assert kind.source_stamp(params, _ctx(tmp_path, input_sha["input"])) == ""
    assert kind.source_stamp(params, _ctx(tmp_path, sha)) is None  # another input
    assert kind.source_stamp(params, _ctx(tmp_path, input_sha["input"], "other")) is None
    # a change made behind the stage's back (here: a deleted point) re-runs it
    with vec.QdrantTarget.local(store(tmp_path), "docs").client() as client:
        client.delete("docs", points_selector=models.PointIdsList(points=[vec.point_id("re.sub")]))
    assert kind.source_stamp(params, _ctx(tmp_path, input_sha["input"])) is None
    shutil.rmtree(store(tmp_path) / "vectors")
    assert kind.source_stamp(params, _ctx(tmp_path, input_sha["input"])) is None
    server = IndexParams(url="http://127.0.0.1:6333")
    assert kind.source_stamp(server, _ctx(tmp_path, input_sha["input"])) is None


def test_a_pipeline_reuses_the_index_until_its_directory_is_deleted(
    docs: pl.DataFrame, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    docs.write_parquet(tmp_path / "data" / "docs.parquet")
    pipe = dw.pipeline(
        "pydocs",
        [
            dw.Stage("docs", "extract", params={"path": "data/docs.parquet"}),
            dw.Stage(
                "embed", "embed", ["docs"], params={"text": "doc", "key": "id", "keep": "module"}
            ),
            dw.Stage("docs_index", "index", ["embed"]),
        ],
        project_dir=tmp_path,
    )
    first = {s.stage: s.status for s in dw.run(pipe).stages.values()}
    assert first == {"docs": "ok", "embed": "ok", "docs_index": "ok"}
    second = {s.stage: s.status for s in dw.run(pipe).stages.values()}
    assert second == {"docs": "cached", "embed": "cached", "docs_index": "cached"}
    shutil.rmtree(tmp_path / ".ductwork" / "vectors")
    third = dw.run(pipe).stages
    assert {s.stage: s.status for s in third.values()}["docs_index"] == "ok"
    assert third["docs_index"].metrics["upserted"] == docs.height

    hits = api.search(pipe, "find the median of some numbers", k=2)
    assert [h["rank"] for h in hits] == [1, 2]
    assert hits[0]["id"] == "statistics.median"
    assert hits[0]["payload"]["module"] == "statistics"
    hits = api.search(pipe, "find the median of some numbers", k=3, where={"module": "math"})
    assert {h["payload"]["module"] for h in hits} == {"math"}
    with pytest.raises(
        UsageError, match="'docs_indx' is not an index stage - did you mean 'docs_index'"
    ):
        api.search(pipe, "x", index="docs_indx")


def test_the_search_command(
    docs: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    docs.write_parquet(tmp_path / "data" / "docs.parquet")
    (tmp_path / "pipeline.yaml").write_text(
        textwrap.dedent(
            """
            pipeline: pydocs
            stages:
              - name: docs
                kind: extract
                params: {path: data/docs.parquet}
              - name: embed
                kind: embed
                inputs: [docs]
                params: {text: doc, key: id, keep: [module, name]}
              - name: docs_index
                kind: index
                inputs: [embed]
            """
        )
    )
    from ductwork.cli import STATE, cli

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(cli, ["run", "--json"]).exit_code == 0
    STATE.json = None
    res = runner.invoke(
        cli, ["search", "remove a directory tree", "-k", "2", "--where", "module=shutil", "--json"]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output.splitlines()[-1])
    assert doc["schema"] == "ductwork.search/v1"
    assert [h["id"] for h in doc["hits"]] == ["shutil.rmtree", doc["hits"][1]["id"]]
    assert {h["payload"]["module"] for h in doc["hits"]} == {"shutil"}
    STATE.json = None
    res = runner.invoke(cli, ["search", "remove a directory tree", "-k", "1", "--no-json"])
    assert res.exit_code == 0, res.output
    assert "shutil.rmtree" in res.output and "rank" in res.output
    STATE.json = None


# ------------------------------------------------------------------------------ LanceDB
def test_lancedb_backend_syncs_and_searches_like_qdrant(
    embedded: pl.DataFrame, indexed: dict[str, Any], tmp_path: Path
) -> None:
    pytest.importorskip("lancedb")  # the optional 'lancedb' extra
    first = index(embedded, tmp_path, tmp_path / "w1", backend="lancedb").values["index"]
    assert (first["backend"], first["location"]) == ("lancedb", "vectors/lancedb/docs")
    assert (first["count"], first["upserted"]) == (embedded.height, embedded.height)
    again = index(embedded, tmp_path, tmp_path / "w2", backend="lancedb").values["index"]
    assert (again["upserted"], again["deleted"], again["unchanged"]) == (0, 0, embedded.height)
    edited = embedded.filter(pl.col("id") != "re.sub").with_columns(
        module=pl.when(pl.col("id") == "json.loads").then(pl.lit("JSON")).otherwise("module")
    )
    synced = index(edited, tmp_path, tmp_path / "w3", backend="lancedb").values["index"]
    assert (synced["upserted"], synced["deleted"], synced["count"]) == (1, 1, edited.height)

    lance = vec.search(synced, list(QUERIES), k=3, store_root=store(tmp_path))
    qdrant = vec.search(indexed["manifest"], list(QUERIES), k=3, store_root=indexed["store"])
    assert [h[0].id for h in lance] == list(QUERIES.values())
    for a, b in zip(lance, qdrant, strict=True):  # the same vectors: the same cosine scores
        assert [h.id for h in a] == [h.id for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
        assert a[0].payload == b[0].payload
    [hits] = vec.search(
        synced, ["decode JSON"], k=5, store_root=store(tmp_path), where={"module": "JSON"}
    )
    assert [h.id for h in hits] == ["json.loads"]

    fewer = index(edited, tmp_path, tmp_path / "w4", backend="lancedb", payload=["module"])
    assert fewer.values["index"]["recreated"] is True  # other columns: a new table
    assert fewer.values["index"]["count"] == edited.height
    synced = index(edited, tmp_path, tmp_path / "w5", backend="lancedb").values["index"]

    kind, params = Index(), IndexParams(backend="lancedb")
    marker = json.loads((store(tmp_path) / synced["location"] / vec.STATE_FILE).read_text())
    assert kind.source_stamp(params, _ctx(tmp_path, marker["input"])) == ""
    shutil.rmtree(store(tmp_path) / "vectors" / "lancedb")
    assert kind.source_stamp(params, _ctx(tmp_path, marker["input"])) is None


# ------------------------------------------------------------------------------ errors
def test_lancedb_without_the_extra_is_a_missing_extra(
    embedded: pl.DataFrame, tmp_path: Path
) -> None:
    if importlib.util.find_spec("lancedb") is not None:
        pytest.skip("lancedb is installed (the optional 'lancedb' extra)")
    with pytest.raises(MissingExtra, match="requires the 'lancedb' module") as e:
        index(embedded, tmp_path, tmp_path / "w", backend="lancedb")
    assert "pip install 'ductwork[lancedb]'" in str(e.value)


def test_an_unreachable_server_is_a_source_error(embedded: pl.DataFrame, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        SourceError, match=f"cannot reach the Qdrant server at http://127.0.0.1:{port}"
    ):
        index(
            embedded, tmp_path, tmp_path / "w", url=f"http://user:pw@127.0.0.1:{port}", timeout_s=2
        )


def test_a_missing_api_key_names_the_variable(
    embedded: pl.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DW_TEST_QDRANT_KEY", raising=False)
    with pytest.raises(
        DataError, match=r"api_key_env names \$DW_TEST_QDRANT_KEY, which is not set"
    ):
        index(
            embedded,
            tmp_path,
            tmp_path / "w",
            url="http://127.0.0.1:9",
            api_key_env="DW_TEST_QDRANT_KEY",
        )


def test_a_collection_ductwork_did_not_write_is_left_alone(
    embedded: pl.DataFrame, tmp_path: Path
) -> None:
    with vec.QdrantTarget.local(store(tmp_path), "docs").client() as client:
        client.create_collection(
            "docs", vectors_config=models.VectorParams(size=384, distance=models.Distance.COSINE)
        )
        client.upsert("docs", points=[models.PointStruct(id=1, vector=[0.1] * 384, payload={})])
    with pytest.raises(DataError, match="holds points that ductwork did not write"):
        index(embedded, tmp_path, tmp_path / "w")
    assert len(points(tmp_path)) == 1


def test_bad_input_tables_are_named(embedded: pl.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no 'embedding' column - did you mean 'embeding'"):
        index(embedded.rename({"embedding": "embeding"}), tmp_path, tmp_path / "w")
    dup = pl.concat([embedded, embedded.head(1)])
    with pytest.raises(DataError, match=r"key column 'id' is not unique: 'math\.sqrt'"):
        index(dup, tmp_path, tmp_path / "w")
    with pytest.raises(
        DataError, match="payload column 'modul' is not in the input - did you mean"
    ):
        index(embedded, tmp_path, tmp_path / "w", payload=["modul"])
    ragged = embedded.head(2).with_columns(
        embedding=pl.Series([[0.1, 0.2], [0.3]], dtype=pl.List(pl.Float32))
    )
    with pytest.raises(DataError, match=r"embeddings have different sizes: \[1, 2\]"):
        index(ragged, tmp_path, tmp_path / "w")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"collection": "my docs"}, "not a valid name"),
        ({"url": "127.0.0.1:6333"}, "not an http"),
        ({"api_key_env": "KEY"}, "local mode needs no key"),
        ({"payload": ["_dw_key"]}, "reserved"),
        ({"distance": "manhattan"}, "distance"),
    ],
)
def test_bad_params_are_spec_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        IndexParams.model_validate(params)


def test_recall_at_k_counts_the_share_of_relevant_ids_found() -> None:
    hits = [[vec.Hit("a", 0.9), vec.Hit("b", 0.8)], [vec.Hit("c", 0.7), vec.Hit("d", 0.6)]]
    assert vec.recall_at_k(hits, ["b", "x"], k=2) == 0.5
    assert vec.recall_at_k(hits, ["b", "x"], k=1) == 0.0
    assert vec.recall_at_k(hits, [{"a", "z"}, ["c", "d"]]) == 0.75
    with pytest.raises(ValueError, match="2 result lists but 1"):
        vec.recall_at_k(hits, ["a"])
