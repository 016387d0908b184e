"""The ``predict`` stage's chunks fanned out over a real ``ray start --head`` cluster.

The cluster (2 CPUs, token authentication, HOME and TMPDIR in a throwaway directory) serves
the module and is stopped with ``ray stop`` at the end, as in test_ray_executor.py. The model
is fitted here on scikit-learn's breast cancer data (a scaler and a logistic regression) and
written as a bundle the way the train stage writes one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ductwork as dw

if importlib.util.find_spec("ray") is None:
    pytest.skip("ray is not installed (pip install 'ductwork[ray]')", allow_module_level=True)
pytest.importorskip("sklearn", reason="the predict stage needs ductwork[ml]")

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("skl2onnx", "onnxruntime"))
COPIES = 8  # 8 x 569 = 4,552 rows
CHUNK_ROWS = 300  # 16 chunks

STEPS = """
import numpy as np
import polars as pl
from sklearn.datasets import load_breast_cancer


def rows(copies: int = 8, inf_row: int = -1) -> pl.DataFrame:
    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    df = pl.DataFrame(np.tile(data.data, (copies, 1)), schema=names, orient="row")
    df = df.with_row_index("id")
    null = (pl.col("id") % 500 == 7) | (pl.col("id") == 1408)
    nan = (pl.col("id") % 700 == 11) | (pl.col("id") == 1408)
    return df.with_columns(
        pl.when(null).then(None).otherwise(pl.col("mean_radius")).alias("mean_radius"),
        pl.when(nan).then(float("nan")).otherwise(pl.col("mean_texture")).alias("mean_texture"),
        pl.when(pl.col("id") == inf_row)
        .then(float("inf"))
        .otherwise(pl.col("worst_area"))
        .alias("worst_area"),
    )
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reload_ray_auth() -> None:
    """Ray reads RAY_AUTH_MODE and the token when it is imported: make it read them again."""
    if "ray" in sys.modules:
        from ray._private.authentication_test_utils import reset_auth_token_state

        reset_auth_token_state()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """``host:port`` of a 2-CPU Ray head started with ``ray start``; stopped at the end."""
    base = Path(tempfile.mkdtemp(prefix="dwpr-", dir="/tmp"))  # short: Ray's socket paths
    home, tmp = base / "home", base / "t"
    home.mkdir()
    tmp.mkdir()
    env_vars = {
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "RAY_AUTH_MODE": "token",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    saved = {k: os.environ.get(k) for k in env_vars}
    env = {**os.environ, **env_vars}
    ray_bin = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    try:
        token = subprocess.run(
            [ray_bin, "get-auth-token", "--generate"],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if token.returncode != 0:
            pytest.fail(f"ray get-auth-token failed:\n{token.stderr}", pytrace=False)
        started = subprocess.run(
            [
                ray_bin, "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats",
            ],
            env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        if started.returncode != 0:
            pytest.fail(f"ray start failed:\n{started.stdout}\n{started.stderr}", pytrace=False)
        os.environ.update(env_vars)  # the driver (this process) joins with the same token
        _reload_ray_auth()
        yield f"127.0.0.1:{port}"
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        subprocess.run(
            [ray_bin, "stop", "--force"], env=env, capture_output=True, timeout=120, check=False
        )
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reload_ray_auth()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scaler + logistic regression fitted on the breast cancer data, as a bundle."""
    import polars as pl
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from ductwork.ml.bundle import (
        BundleMeta,
        input_schema,
        library_versions,
        proba_column,
        write_bundle,
    )

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    X = pl.DataFrame(data.data, schema=names, orient="row")
    model = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=500))])
    model.fit(X, data.target)
    meta = BundleMeta(
        task="classification",
        target="malignant",
        classes=[0, 1],
        model="test",
        estimator="LogisticRegression",
        input_schema=input_schema(X, X.columns),
        output_schema={"prediction": "Int64", **{proba_column(c): "Float64" for c in (0, 1)}},
        versions=library_versions(),
    )
    directory = tmp_path_factory.mktemp("cancer") / "bundle"
    directory.mkdir()
    if HAS_ONNX:  # as the train stage does: model.onnx next to the model, checked against it
        from ductwork.ml.onnx import export_onnx

        meta = meta.model_copy(update={"onnx": export_onnx(model, meta, X, directory)})
        assert meta.onnx is not None and meta.onnx.matches, meta.onnx
    write_bundle(directory, model, meta)
    return directory


@pytest.fixture
def project(tmp_path: Path, bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str]:
    """A project with the bundle and a uniquely named module of stage functions."""
    steps = f"predsteps_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{steps}.py").write_text(textwrap.dedent(STEPS))
    shutil.copytree(bundle_dir, tmp_path / "bundle")
    for name in ("DUCTWORK_STORE", "DUCTWORK_EXECUTOR", "DUCTWORK_RAY_ADDRESS", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path, steps


def write(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def shas(res: Any, stage: str) -> dict[str, str]:
    return {out: info.sha256 for out, info in res.stages[stage].outputs.items()}


def test_chunks_fan_out_over_ray_workers_with_the_local_executors_bytes(
    ray_cluster: str, project: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, steps = project

    def pipeline(name: str, executor: str, fan_out: str) -> Path:
        return write(
            root,
            name,
            f"""
            pipeline: fan-out
            executor: {executor}
            stages:
              - {{name: rows, kind: python, uses: "{steps}:rows", params: {{args: {{copies: {COPIES}}}}}}}
              - name: score
                kind: predict
                inputs: {{data: rows}}
                params: {{model: bundle, keep: [id], chunk_rows: {CHUNK_ROWS}, fan_out: {fan_out}}}
            """,
        )

    on_ray = dw.load(pipeline("ray.yaml", f'{{kind: ray, address: "{ray_cluster}"}}', "ray"))
    res = dw.run(on_ray)
    assert res.exit_code == 0, res.error
    metrics = res.stages["score"].metrics
    assert metrics["fan_out"] == "ray"
    rows = COPIES * 569
    chunks = -(-rows // CHUNK_ROWS)
    assert metrics["chunks"] == chunks == 16
    workers = metrics["chunk_workers"]  # "host:pid" -> chunks scored there
    assert sum(workers.values()) == chunks
    assert len(workers) >= 2, workers  # spread over more than one worker process
    assert chunks > len(workers)  # more than one chunk per worker
    assert str(os.getpid()) not in {w.rsplit(":", 1)[1] for w in workers}

    # the same rows through the local executor (fan_out: auto outside Ray scores in-process)
    monkeypatch.setenv("DUCTWORK_STORE", str(root / "local-store"))
    local = dw.run(dw.load(pipeline("local.yaml", "{kind: local}", "auto")))
    assert local.exit_code == 0, local.error
    assert local.stages["score"].metrics["fan_out"] == "none"
    assert shas(res, "score") == shas(local, "score")  # byte-identical outputs
    for key in ("rows_in", "rows_scored", "rows_quarantined", "quarantine_reasons", "chunks"):
        assert metrics[key] == local.stages["score"].metrics[key], key
    monkeypatch.delenv("DUCTWORK_STORE")

    quarantine = dw.artifact(on_ray, "score", "quarantine")
    null_ids = {i for i in range(rows) if i % 500 == 7} | {1408}
    nan_ids = {i for i in range(rows) if i % 700 == 11} | {1408}
    assert quarantine["_row"].to_list() == sorted(null_ids | nan_ids)
    assert quarantine["id"].to_list() == quarantine["_row"].to_list()
    assert quarantine.filter(quarantine["_row"] == 1408)["_failed_checks"].to_list() == [
        ["mean_radius: null", "mean_texture: NaN"]
    ]
    assert metrics["quarantine_reasons"] == {
        "mean_radius: null": len(null_ids),
        "mean_texture: NaN": len(nan_ids),
    }
    predictions = dw.artifact(on_ray, "score")
    assert predictions.height == rows - len(null_ids | nan_ids)
    assert predictions["id"].is_sorted()  # gathered in input order
    assert predictions.columns == ["id", "prediction", "proba_0", "proba_1", "model_version"]


def test_fan_out_ray_from_the_local_executor_and_errors_as_locally(
    ray_cluster: str, project: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``fan_out: ray`` outside a Ray worker joins DUCTWORK_RAY_ADDRESS; the ONNX engine gives
    the local bytes too; a contract error is the local one, and a chunk the model fails on
    names its rows."""
    root, steps = project
    inf_row = 700  # in chunk 3 (rows 600-899): the scaler refuses infinity

    def pipeline(name: str, fan_out: str) -> Path:
        text = f"""
            pipeline: fan-out-errors
            stages:
              - {{name: rows, kind: python, uses: "{steps}:rows", params: {{args: {{copies: 2}}}}}}
              - name: inf
                kind: python
                uses: "{steps}:rows"
                inputs: []
                params: {{args: {{copies: 2, inf_row: {inf_row}}}}}
              - name: strict
                kind: predict
                inputs: {{data: rows}}
                params: {{model: bundle, chunk_rows: {CHUNK_ROWS}, on_invalid: fail, fan_out: {fan_out}}}
              - name: broken
                kind: predict
                inputs: {{data: inf}}
                params: {{model: bundle, chunk_rows: {CHUNK_ROWS}, fan_out: {fan_out}}}
            """
        if HAS_ONNX:
            text += f"""
              - name: onnx
                kind: predict
                inputs: {{data: rows}}
                params: {{model: bundle, chunk_rows: {CHUNK_ROWS}, engine: onnx, fan_out: {fan_out}}}
            """
        return write(root, name, text)

    monkeypatch.setenv("DUCTWORK_RAY_ADDRESS", ray_cluster)
    res = dw.run(dw.load(pipeline("ray.yaml", "ray")))
    monkeypatch.delenv("DUCTWORK_RAY_ADDRESS")
    monkeypatch.setenv("DUCTWORK_STORE", str(root / "local-store"))
    local = dw.run(dw.load(pipeline("local.yaml", "none")))
    assert res.exit_code == local.exit_code == 2  # the contract error is a data error

    strict, strict_local = res.stages["strict"].error or {}, local.stages["strict"].error or {}
    assert strict["type"] == strict_local["type"] == "DataError"
    assert strict["message"] == strict_local["message"]
    assert strict["message"].startswith("stage 'strict': column 'mean_radius' is null (row 7)")
    assert strict["hint"] == strict_local["hint"]

    broken = res.stages["broken"].error or {}
    assert broken["type"] == "ChunkFailed"
    assert "stage 'broken': scoring rows 600-899 (chunk 3 of 4) failed on " in broken["message"]
    assert "ValueError: Input X contains infinity" in broken["message"]
    assert broken["transient"] is True  # like the local ValueError: stage retries may re-run it
    assert "the worker's traceback" in broken["traceback"]
    assert (
        "ValueError: Input X contains infinity" in (local.stages["broken"].error or {})["message"]
    )

    if HAS_ONNX:
        assert res.stages["onnx"].metrics["fan_out"] == "ray"
        assert local.stages["onnx"].metrics["fan_out"] == "none"
        assert shas(res, "onnx") == shas(local, "onnx")

    import ray

    assert not ray.is_initialized()  # the stage's connection was closed after it


def test_fan_out_auto_outside_ray_never_imports_ray(bundle_dir: Path, tmp_path: Path) -> None:
    code = textwrap.dedent(
        """
        import json, sys
        import polars as pl
        from ductwork.testing import run_stage

        from pathlib import Path

        bundle, work = sys.argv[1], Path(sys.argv[2])
        names = json.loads(sys.argv[3])
        df = pl.DataFrame({n: [1.0] * 50 for n in names})
        out = run_stage("predict", {"model": bundle, "chunk_rows": 10}, {"data": df}, work)
        print(json.dumps({"ray": "ray" in sys.modules, "metrics": out.metrics}))
        """
    )
    from ductwork.ml.bundle import Bundle

    names = Bundle.load(bundle_dir).meta.input_columns
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, "-c", code, str(bundle_dir), str(tmp_path), json.dumps(names)],
        capture_output=True, text=True, timeout=120, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["ray"] is False
    assert found["metrics"]["fan_out"] == "none"
    assert found["metrics"]["chunks"] == 5
