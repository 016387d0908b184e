"""The artifact store in S3 (``DUCTWORK_STORE=s3://bucket/prefix``) against a real S3 API.

``moto_server`` runs on 127.0.0.1 (the ``s3_server`` fixture); ductwork talks to it through
s3fs exactly as to AWS. Each test gets its own bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("s3fs", reason="s3fs is not installed (pip install 'ductwork[s3]')")
pytest.importorskip("boto3", reason="boto3 is not installed")

import polars as pl

import ductwork as dw
from ductwork.config import load_settings
from ductwork.core.remote import MARKER, RemoteStore
from ductwork.core.store import open_store
from ductwork.errors import MissingExtra, StoreError

STEPS = """
import os
from pathlib import Path

import polars as pl


def src():
    return pl.DataFrame({"x": [1, 2, 3], "g": ["a", "b", "a"]})


def double(src: pl.LazyFrame, factor: int = 2) -> pl.LazyFrame:
    if os.environ.get("DW_TEST_FAIL_DOUBLE"):
        raise RuntimeError("boom in stage")
    return src.with_columns(pl.col("x") * factor)


def report(summed: pl.LazyFrame, ctx) -> Path:
    out = ctx.tmp_dir / "report"
    (out / "data").mkdir(parents=True)
    frame = summed.collect()
    (out / "index.txt").write_text(f"{frame.height} groups\\n")
    frame.write_csv(out / "data" / "rows.csv")
    return out


def count_files(report: Path) -> dict:
    files = sorted(p.relative_to(report).as_posix() for p in report.rglob("*") if p.is_file())
    return {"files": files, "index": (report / "index.txt").read_text()}
"""

PIPELINE = """
pipeline: s3t
stages:
  - name: src
    kind: python
    uses: {mod}:src
  - name: copy
    kind: python
    uses: {mod}:src
    inputs: []
  - name: doubled
    kind: python
    uses: {mod}:double
    inputs: [src]
    params: {{args: {{factor: {factor}}}}}
  - name: summed
    kind: transform
    inputs: [doubled]
    params:
      sql: select g, sum(x) as total from doubled group by g order by g
  - name: report
    kind: python
    uses: {mod}:report
    inputs: [summed]
    params: {{outputs: {{main: files}}}}
  - name: counted
    kind: python
    uses: {mod}:count_files
    inputs: [report]
    params: {{outputs: {{main: json}}}}
"""
ALL_OK = dict.fromkeys(("src", "copy", "doubled", "summed", "report", "counted"), "ok")
ALL_CACHED = dict.fromkeys(ALL_OK, "cached")


@dataclass
class Remote:
    url: str
    bucket: str
    env: dict[str, str]
    fs: Any  # an s3fs filesystem on the test server

    def objects(self) -> list[str]:
        """Every key under the store's objects/ (files of file sets included)."""
        base = self.url.removeprefix("s3://")
        return sorted(k.removeprefix(f"{base}/objects/") for k in self.fs.find(f"{base}/objects"))

    def shas(self) -> set[str]:
        return {k.split("/")[0].split(".")[0] for k in self.objects()}


@pytest.fixture
def remote(s3_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Remote:
    """A fresh bucket; DUCTWORK_STORE and the DUCTWORK_S3_* settings point at it."""
    import boto3
    import s3fs

    bucket = f"dw-{uuid.uuid4().hex[:12]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_server["DUCTWORK_S3_ENDPOINT_URL"],
        aws_access_key_id=s3_server["DUCTWORK_S3_KEY"],
        aws_secret_access_key=s3_server["DUCTWORK_S3_SECRET"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket=bucket)  # no location constraint: see the scale-out notes
    url = f"s3://{bucket}/team/project"
    env = {**s3_server, "DUCTWORK_STORE": url}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    fs = s3fs.S3FileSystem(
        key=s3_server["DUCTWORK_S3_KEY"],
        secret=s3_server["DUCTWORK_S3_SECRET"],
        endpoint_url=s3_server["DUCTWORK_S3_ENDPOINT_URL"],
        use_listings_cache=False,
        skip_instance_cache=True,
    )
    return Remote(url, bucket, env, fs)


def make_project(root: Path, mod: str, *, factor: int = 2) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{mod}.py").write_text(textwrap.dedent(STEPS))
    (root / "pipeline.yaml").write_text(textwrap.dedent(PIPELINE.format(mod=mod, factor=factor)))
    return root / "pipeline.yaml"


@pytest.fixture
def mod() -> str:
    return f"s3steps_{uuid.uuid4().hex[:8]}"


def statuses(res: Any) -> dict[str, str]:
    return {name: s.status for name, s in res.stages.items()}


def cached_files(project: Path) -> list[str]:
    cache = project / ".ductwork" / "cache" / "objects"
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_pipeline_publishes_to_s3_and_a_rerun_is_all_cached(
    tmp_path: Path, remote: Remote, mod: str
) -> None:
    pipe = dw.load(make_project(tmp_path, mod))
    first = dw.run(pipe)
    assert first.exit_code == 0, first.error
    assert statuses(first) == ALL_OK
    outs = {n: s.outputs["main"] for n, s in first.stages.items()}
    keys = remote.objects()
    for name in ("src", "doubled", "summed"):
        assert f"{outs[name].sha256}.parquet" in keys
    assert f"{outs['counted'].sha256}.json" in keys
    files = outs["report"].sha256
    assert f"{files}{MARKER}" in keys
    assert {f"{files}/index.txt", f"{files}/data/rows.csv"} <= set(keys)
    marker = json.loads(remote.fs.cat_file(f"{remote.url}/objects/{files}{MARKER}"))
    assert [f["path"] for f in marker["files"]] == ["data/rows.csv", "index.txt"]
    # the local directory holds the read cache, scratch space and records; no objects/ layout
    local = tmp_path / ".ductwork"
    assert not (local / "objects").exists() or not any((local / "objects").iterdir())
    assert f"{outs['summed'].sha256}.parquet" in cached_files(tmp_path)

    again = dw.run(pipe)
    assert statuses(again) == ALL_CACHED
    assert {n: s.outputs for n, s in again.stages.items()} == {
        n: s.outputs for n, s in first.stages.items()
    }
    assert dw.artifact(pipe, "summed").to_dicts() == [
        {"g": "a", "total": 8},
        {"g": "b", "total": 4},
    ]
    assert dw.artifact(pipe, "counted")["files"] == ["data/rows.csv", "index.txt"]


def test_second_clone_with_an_empty_local_dir_downloads_on_demand(
    tmp_path: Path, remote: Remote, mod: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUCTWORK_DATABASE_URL", f"sqlite:///{tmp_path / 'shared' / 'records.db'}")
    (tmp_path / "shared").mkdir()
    first = dw.run(dw.load(make_project(tmp_path / "a", mod)))
    assert statuses(first) == ALL_OK
    clone = dw.load(make_project(tmp_path / "b", mod))
    again = dw.run(clone)
    assert statuses(again) == ALL_CACHED
    assert cached_files(tmp_path / "b") == []  # all cached: nothing had to be downloaded
    lineage = dw.lineage(clone, "summed")  # described from the object store, not downloaded
    assert lineage["in_store"] and lineage["rows"] == 2
    assert lineage["inputs"]["doubled"]["in_store"]
    assert cached_files(tmp_path / "b") == []
    proj = dw.api.open_project(clone)
    try:
        info = proj.store.find(lineage["sha256"])
    finally:
        proj.records.close()
    assert info is not None and info.rows == 2 and info.schema == {"g": "String", "total": "Int64"}
    assert dw.artifact(clone, "summed")["total"].to_list() == [8, 4]
    summed = first.stages["summed"].outputs["main"].sha256
    assert cached_files(tmp_path / "b") == [f"{summed}.parquet"]  # read through the cache
    exported = dw.export(clone, "report", tmp_path / "exported")
    assert (exported / "index.txt").read_text() == "2 groups\n"
    # a changed stage in the clone reads its input from the object store
    changed = dw.run(dw.load(make_project(tmp_path / "b", mod, factor=3)))
    assert statuses(changed) == {**ALL_OK, "src": "cached", "copy": "cached"}
    src = first.stages["src"].outputs["main"].sha256
    assert f"{src}.parquet" in cached_files(tmp_path / "b")
    summed_now = dw.artifact(dw.load(tmp_path / "b" / "pipeline.yaml"), "summed")
    assert summed_now["total"].to_list() == [12, 6]


def test_same_content_is_one_object_and_is_uploaded_once(
    tmp_path: Path, remote: Remote, mod: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    res = dw.run(dw.load(make_project(tmp_path, mod)))
    src, copy = (res.stages[n].outputs["main"].sha256 for n in ("src", "copy"))
    assert src == copy
    assert remote.objects().count(f"{src}.parquet") == 1
    uploads: list[str] = []
    original = RemoteStore._put

    def counting(self: RemoteStore, local: Path, key: str, *, create: bool = True) -> None:
        uploads.append(key)
        original(self, local, key, create=create)

    monkeypatch.setattr(RemoteStore, "_put", counting)
    # another machine (its own empty local dir) writes the same rows: found by a HEAD, no PUT
    other = open_store(tmp_path / "other", remote.url, load_settings(tmp_path))
    info = other.put_table(pl.DataFrame({"x": [1, 2, 3], "g": ["a", "b", "a"]}))
    assert info.sha256 == src
    assert uploads == []
    fresh = other.put_text("new content")
    assert uploads == [f"{remote.url.removeprefix('s3://')}/objects/{fresh.sha256}.txt"]
    # a create-only PUT that loses a race is success: the same name holds the same bytes
    assert isinstance(other, RemoteStore)
    other._put(Path(info.path), other.key(src, "table"))
    assert remote.objects().count(f"{src}.parquet") == 1


def test_a_table_is_described_from_its_parquet_footer_alone(
    tmp_path: Path, remote: Remote, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ductwork.core.remote as remote_mod

    writer = open_store(tmp_path / "w", remote.url, load_settings(tmp_path))
    frame = pl.DataFrame({"k": range(50_000), "v": [f"row {i}" for i in range(50_000)]})
    written = writer.put_table(frame)
    monkeypatch.setattr(remote_mod, "TABLE_TAIL", 16)  # the footer needs a second ranged read
    reader = open_store(tmp_path / "r", remote.url, load_settings(tmp_path))
    found = reader.find(written.sha256)
    assert found is not None
    assert (found.rows, found.schema, found.bytes) == (50_000, written.schema, written.bytes)
    assert list((tmp_path / "r" / "cache" / "objects").iterdir()) == []  # nothing downloaded
    assert reader.info(written.sha256).path.endswith(".parquet")  # info() downloads
    assert pl.read_parquet(reader.info(written.sha256).path).equals(frame)


def test_a_file_set_without_its_marker_is_invisible(
    tmp_path: Path, remote: Remote, mod: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = RemoteStore._put

    def interrupted(self: RemoteStore, local: Path, key: str, *, create: bool = True) -> None:
        if key.endswith(MARKER):  # the process dies after the files, before the marker
            raise StoreError("simulated crash before the marker")
        original(self, local, key, create=create)

    monkeypatch.setattr(RemoteStore, "_put", interrupted)
    pipe = dw.load(make_project(tmp_path, mod))
    res = dw.run(pipe)
    assert statuses(res)["report"] == "failed"
    assert statuses(res)["counted"] == "skipped"
    partial = {k.split("/")[0] for k in remote.objects() if "/" in k}
    assert len(partial) == 1  # the files went up ...
    sha = partial.pop()
    assert f"{sha}{MARKER}" not in remote.objects()  # ... the marker did not
    # a reader with an empty cache sees nothing: not present, not findable, no prefix match
    reader = open_store(tmp_path / "reader", remote.url, load_settings(tmp_path))
    assert not reader.has(sha, "files")
    assert reader.find(sha) is None
    with pytest.raises(StoreError, match="no artifact match"):
        reader.resolve_prefix(sha[:8])
    monkeypatch.setattr(RemoteStore, "_put", original)
    resumed = dw.run(pipe)
    assert statuses(resumed)["report"] == "ok"
    assert statuses(resumed)["counted"] == "ok"
    assert resumed.stages["report"].outputs["main"].sha256 == sha
    assert reader.has(sha, "files")
    assert reader.resolve_prefix(sha[:8]) == sha
    local = reader.info(sha)  # downloaded from the marker's listing, sha256 checked
    assert (Path(local.path) / "data" / "rows.csv").exists()


def test_gc_removes_unreferenced_remote_objects_and_trims_the_cache(
    tmp_path: Path, remote: Remote, mod: str
) -> None:
    first = dw.run(dw.load(make_project(tmp_path, mod)))
    second = dw.run(dw.load(make_project(tmp_path, mod, factor=3)))
    assert statuses(second)["doubled"] == "ok"
    old = {s.outputs["main"].sha256 for s in first.stages.values()}
    new = {s.outputs["main"].sha256 for s in second.stages.values()}
    gone = old - new
    assert gone and remote.shas() == old | new
    dry = dw.gc(dw.load(tmp_path / "pipeline.yaml"), keep=1, dry_run=True)
    assert dry["objects_removed"] == len(gone)
    assert remote.shas() == old | new
    res = dw.gc(dw.load(tmp_path / "pipeline.yaml"), keep=1)
    assert res["objects_removed"] == len(gone)
    assert res["bytes_removed"] > 0
    assert res["cache_objects_removed"] == len(gone)
    assert remote.shas() == new
    assert {n.split(".")[0] for n in cached_files(tmp_path)} == new
    # an entry whose objects are gone is ignored: the first params re-run, not "cached"
    again = dw.run(dw.load(make_project(tmp_path, mod)))
    assert statuses(again)["doubled"] == "ok"


def test_a_failed_stage_keeps_earlier_artifacts_and_resumes(
    tmp_path: Path, remote: Remote, mod: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = dw.load(make_project(tmp_path, mod))
    monkeypatch.setenv("DW_TEST_FAIL_DOUBLE", "1")
    res = dw.run(pipe)
    assert res.exit_code == 1
    assert statuses(res) == {
        "src": "ok",
        "copy": "ok",
        "doubled": "failed",
        "summed": "skipped",
        "report": "skipped",
        "counted": "skipped",
    }
    src = res.stages["src"].outputs["main"].sha256
    assert f"{src}.parquet" in remote.objects()
    monkeypatch.delenv("DW_TEST_FAIL_DOUBLE")
    shutil.rmtree(tmp_path / ".ductwork" / "cache")  # resume from the object store alone
    resumed = dw.run(pipe)
    assert statuses(resumed) == {**ALL_OK, "src": "cached", "copy": "cached"}
    assert dw.artifact(pipe, "summed")["total"].to_list() == [8, 4]


def test_credentials_never_reach_records_output_or_errors(
    tmp_path: Path, remote: Remote, mod: str
) -> None:
    make_project(tmp_path, mod)
    exe = Path(sys.executable).with_name("ductwork")
    env = {**os.environ, **remote.env, "NO_COLOR": "1"}

    def cli(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(exe), *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**env, **(extra or {})},
            timeout=300,
        )

    # worker processes open the store from their own environment (as a Ray worker would)
    ran = cli("run", "--workers", "2", "--pool", "process", "--json")
    summary = json.loads(ran.stdout.splitlines()[-1])
    assert summary["status"] == "ok", ran.stdout + ran.stderr
    outputs = [ran, cli("show", "summed", "--json"), cli("gc", "--dry-run", "--json")]
    wrong = cli("run", "--force", "--json", extra={"DUCTWORK_STORE": "s3://no-such-bucket/x"})
    assert wrong.returncode != 0
    failed = json.loads(wrong.stdout.splitlines()[-1])
    message = failed["error"]["message"]
    assert "s3://no-such-bucket/x" in message and "failed" in message
    outputs.append(wrong)
    secret, key = remote.env["DUCTWORK_S3_SECRET"], remote.env["DUCTWORK_S3_KEY"]
    for p in outputs:
        assert secret not in p.stdout + p.stderr
        assert key not in p.stdout + p.stderr
    records = (tmp_path / ".ductwork" / "records.db").read_bytes()
    assert secret.encode() not in records and key.encode() not in records
    for path in (tmp_path / ".ductwork").rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    # nor in the store's repr or an error raised in this process
    store = open_store(tmp_path / "x", "s3://no-such-bucket/x", load_settings(tmp_path))
    assert secret not in repr(store) and key not in repr(store)
    with pytest.raises(StoreError) as err:
        store.put_text("hello")
    assert secret not in str(err.value) and key not in str(err.value)
    assert "no-such-bucket" in str(err.value)


def test_credentials_in_the_url_are_refused(tmp_path: Path) -> None:
    from ductwork.errors import UsageError

    with pytest.raises(UsageError, match="has credentials in it") as err:
        open_store(tmp_path, "s3://AKID:hunter2@bucket/x")
    assert "hunter2" not in str(err.value)


def test_missing_s3fs_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs now raises ImportError
    with pytest.raises(MissingExtra, match=r"ductwork\[s3\]"):
        open_store(tmp_path, "s3://bucket/prefix")


def test_a_local_store_never_imports_fsspec(tmp_path: Path, mod: str) -> None:
    make_project(tmp_path, mod)
    code = textwrap.dedent(
        """
        import sys
        import ductwork as dw
        res = dw.run(dw.load("pipeline.yaml"))
        assert res.exit_code == 0, res.error
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("fsspec", "s3fs", "boto3")))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUCTWORK_")}
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "[]"


def test_store_setting_tells_a_url_from_a_directory(tmp_path: Path) -> None:
    from ductwork.config import Settings

    s3 = Settings(store="s3://bucket/prefix")
    assert s3.store_url() == "s3://bucket/prefix"
    assert s3.store_path(tmp_path) == tmp_path / ".ductwork"  # the read cache and scratch space
    for local in ("artifacts", "/srv/ductwork", "C:\\ductwork", "./a://b"):
        assert Settings(store=local).store_url() is None
    assert Settings(store="artifacts").store_path(tmp_path) == tmp_path / "artifacts"


def test_any_fsspec_url_works_the_same_way(
    tmp_path: Path, mod: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file:// store (a shared mount) goes through fsspec with upload-then-rename."""
    for k in [k for k in os.environ if k.startswith("DUCTWORK_")]:
        monkeypatch.delenv(k)
    shared = tmp_path / "shared-store"
    monkeypatch.setenv("DUCTWORK_STORE", shared.as_uri())
    first = dw.run(dw.load(make_project(tmp_path / "a", mod)))
    assert statuses(first) == ALL_OK
    files = first.stages["report"].outputs["main"].sha256
    assert (shared / "objects" / f"{files}{MARKER}").exists()
    assert (shared / "objects" / files / "data" / "rows.csv").exists()
    assert not any((shared / "tmp").iterdir())  # every upload was renamed into place
    monkeypatch.setenv("DUCTWORK_DATABASE_URL", f"sqlite:///{tmp_path / 'a/.ductwork/records.db'}")
    clone = dw.load(make_project(tmp_path / "b", mod))
    assert statuses(dw.run(clone)) == ALL_CACHED
    assert dw.artifact(clone, "counted")["index"] == "2 groups\n"
