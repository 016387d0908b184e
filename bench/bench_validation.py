"""Validation: ductwork's validate stage vs the hand-written Polars limit, pandera and GE, in one run.

Data and rules are those of ../shared/peers/bench_validation.py (same generator, same seed, so
the failure counts are the recorded ones): N rows x 8 columns, ~1% nulls per column, and six
checks: not_null income, not_null score, age between 0 and 150, category in {a..e}, unique id,
code matches ^[A-Z]{3}-[0-9]{5}$.

Two modes, each timed as "read Parquet + validate + write the outputs", every run in a fresh
process, runs interleaved across tools:

(a) report only -- ductwork `validate` with on_fail: warn (the report; `passed` is the input
    unchanged, a pass-through) vs one hand-written Polars aggregate query; pandera (Polars
    backend) and Great Expectations (pandas) validate and report.
(b) quarantine -- ductwork `validate` with on_fail: quarantine, outputs written the way the
    store writes them (zstd Parquet), vs hand-written Polars writing the same passed and
    quarantine Parquet files from one lazy query (pl.collect_all over shared sub-plans).

pandera and GE run only when a peers interpreter has them (--peers-python, default
$DUCTWORK_PEERS_PYTHON or bench/.work/peers-venv/bin/python); otherwise they are skipped with a
note. Set one up outside the dev venv with:

    uv venv bench/.work/peers-venv && uv pip install --python bench/.work/peers-venv/bin/python \\
        polars pyarrow 'pandas<3' numpy great-expectations 'pandera[polars]'

Usage:
    python bench/bench_validation.py                       # 10M rows, writes bench/RESULTS.md
    python bench/bench_validation.py --rows 1000000 --no-write --tools ductwork,limit
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

CATS = ["a", "b", "c", "d", "e"]
REGEX = r"^[A-Z]{3}-[0-9]{5}$"
RULES = [
    "income_not_null",
    "score_not_null",
    "age_between",
    "category_in_set",
    "id_unique",
    "code_regex",
]
CHECKS: list[dict[str, Any]] = [
    {"name": "income_not_null", "column": "income", "not_null": True},
    {"name": "score_not_null", "column": "score", "not_null": True},
    {"name": "age_between", "column": "age", "between": [0, 150]},
    {"name": "category_in_set", "column": "category", "in_set": CATS},
    {"name": "id_unique", "column": "id", "unique": True},
    {"name": "code_regex", "column": "code", "regex": REGEX},
]
DATA_DIR = Path(
    os.environ.get("DUCTWORK_BENCH_DATA", Path(tempfile.gettempdir()) / "ductwork-bench")
)
DEFAULT_PEERS = os.environ.get(
    "DUCTWORK_PEERS_PYTHON",
    str(Path(__file__).resolve().parent / ".work" / "peers-venv" / "bin" / "python"),
)


# ----------------------------------------------------------------------------- data
def generate(rows: int) -> Path:
    """The generator of shared/peers/bench_validation.py, unchanged (seed 42)."""
    import numpy as np
    import polars as pl

    path = DATA_DIR / f"validation_{rows}.parquet"
    if path.exists():
        return path
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(42)
    ids = np.arange(rows, dtype=np.int64)
    dup = rng.choice(rows, size=max(1, rows // 100_000), replace=False)  # 0.001% duplicated ids
    ids[dup] = ids[(dup + 1) % rows]
    age = rng.integers(0, 100, rows)
    bad_age = rng.random(rows) < 0.002
    age[bad_age] = rng.integers(151, 200, bad_age.sum())
    cat = np.array([*CATS, "z"])[np.where(rng.random(rows) < 0.001, 5, rng.integers(0, 5, rows))]
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    prefix = np.char.add(
        np.char.add(letters[rng.integers(0, 26, rows)], letters[rng.integers(0, 26, rows)]),
        letters[rng.integers(0, 26, rows)],
    )
    df = pl.DataFrame(
        {
            "id": ids,
            "age": age,
            "income": rng.lognormal(10, 1, rows),
            "score": rng.normal(0, 1, rows),
            "category": cat,
            "code": prefix,
            "count": rng.poisson(3, rows).astype(np.int64),
            "ratio": rng.random(rows),
        }
    ).with_columns(
        pl.concat_str(
            [
                pl.col("code"),
                pl.lit("-"),
                pl.Series(rng.integers(0, 100_000, rows)).cast(pl.Utf8).str.zfill(5),
            ]
        ).alias("code"),
    )
    bad_code = rng.random(rows) < 0.005
    df = df.with_columns(
        pl.when(pl.Series(bad_code))
        .then(pl.col("code").str.to_lowercase())
        .otherwise(pl.col("code"))
        .alias("code")
    )
    for c in ["age", "income", "score", "category", "code", "count", "ratio"]:
        m = pl.Series(rng.random(rows) < 0.01)
        df = df.with_columns(pl.when(m).then(None).otherwise(pl.col(c)).alias(c))
    tmp = path.with_suffix(".tmp")
    df.write_parquet(tmp, row_group_size=1_000_000)
    tmp.rename(path)
    return path


# ----------------------------------------------------------------------------- workers
CPU = {"start": 0.0, "stop": 0.0}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)  # all threads of this process
    return r.ru_utime + r.ru_stime


def _start() -> float:
    CPU["start"] = _cpu()
    return time.perf_counter()


def _stop(t0: float) -> float:
    CPU["stop"] = _cpu()
    return time.perf_counter() - t0


# Each runs in a fresh child process and returns its own timing of the measured region.
def _ductwork(path: str, out: str, mode: str, *, write_passthrough: bool = False) -> dict[str, Any]:

    from ductwork.core.contract import ArtifactInfo, InputArtifact, Inputs, StageContext
    from ductwork.core.store import Store
    from ductwork.stages.validate import Validate

    out_dir = Path(out)
    t0 = _start()
    kind = Validate()
    params = Validate.Params.model_validate({"checks": CHECKS, "on_fail": mode})
    info = ArtifactInfo(sha256="", type="table", bytes=0, rows=None, path=path)
    ctx = StageContext(
        stage="checked", run_id="bench", project_dir=out_dir, work_dir=out_dir / "work"
    )
    values = kind.run(params, Inputs({"data": InputArtifact("data", info)}), ctx)
    written = {}
    store = Store(out_dir / "store")  # the real store: collect, rechunk, write, sha256, rename
    for name in ("passed", "quarantine"):
        value = values[name]
        if isinstance(value, InputArtifact):  # the input handed back unchanged: no write
            if not write_passthrough:
                continue
            value = value.lazy()  # for comparison: what rewriting it would cost
        written[name] = store.put_table(value).path
    report = values["report"]
    (out_dir / "report.json").write_text(
        json.dumps(report, sort_keys=True, indent=1, allow_nan=False)
    )
    work = _stop(t0)
    counts = {r["name"]: r["result"]["unexpected_count"] for r in report["results"]}
    return {
        "work_s": work,
        "counts": counts,
        "rows_passed": report["rows_passed"],
        "rows_quarantined": report["rows_quarantined"],
        "outputs": written if mode == "quarantine" else {},
    }


def run_ductwork_report(path: str, out: str) -> dict[str, Any]:
    return _ductwork(path, out, "warn")


def run_ductwork_report_reencode(path: str, out: str) -> dict[str, Any]:
    return _ductwork(path, out, "warn", write_passthrough=True)


def run_ductwork_quarantine(path: str, out: str) -> dict[str, Any]:
    return _ductwork(path, out, "quarantine")


def _masks() -> list[Any]:
    import polars as pl

    return [
        pl.col("income").is_null().alias("income_not_null"),
        pl.col("score").is_null().alias("score_not_null"),
        pl.col("age").is_between(0, 150).not_().fill_null(False).alias("age_between"),
        pl.col("category").is_in(CATS).not_().fill_null(False).alias("category_in_set"),
        (pl.col("id").is_duplicated() & pl.col("id").is_not_null()).alias("id_unique"),
        pl.col("code").str.contains(REGEX).not_().fill_null(False).alias("code_regex"),
    ]


def run_limit_report(path: str, out: str) -> dict[str, Any]:
    """The limit for (a): one aggregate query, the failure counts only."""
    import polars as pl

    t0 = _start()
    row = (
        pl.scan_parquet(path)
        .select(
            pl.col("income").null_count().alias("income_not_null"),
            pl.col("score").null_count().alias("score_not_null"),
            pl.col("age").is_between(0, 150).not_().sum().alias("age_between"),
            pl.col("category").is_in(CATS).not_().sum().alias("category_in_set"),
            (pl.col("id").is_duplicated() & pl.col("id").is_not_null()).sum().alias("id_unique"),
            pl.col("code").str.contains(REGEX).not_().sum().alias("code_regex"),
        )
        .collect()
        .row(0, named=True)
    )
    work = _stop(t0)
    return {"work_s": work, "counts": {k: int(v) for k, v in row.items()}}


def run_limit_quarantine(path: str, out: str) -> dict[str, Any]:
    """The limit for (b): masks once; counts + passed + quarantine Parquet in one collect_all."""
    import polars as pl

    out_dir = Path(out)
    t0 = _start()
    lf = pl.scan_parquet(path)
    columns = lf.collect_schema().names()
    base = lf.with_row_index("_row").with_columns(_masks())
    bad = pl.any_horizontal(RULES)
    counts_q = base.select([pl.col(r).sum() for r in RULES])
    passed_q = base.filter(bad.not_()).select(columns)
    failed = pl.concat_list([pl.when(pl.col(r)).then(pl.lit(r)) for r in RULES]).list.drop_nulls()
    quarantine_q = base.filter(bad).select(
        *columns, failed.alias("_failed_checks"), pl.col("_row").cast(pl.Int64)
    )
    passed_p, quarantine_p = out_dir / "passed.parquet", out_dir / "quarantine.parquet"
    counts, _, _ = pl.collect_all(
        [
            counts_q,
            passed_q.sink_parquet(passed_p, compression="zstd", statistics=True, lazy=True),
            quarantine_q.sink_parquet(quarantine_p, compression="zstd", statistics=True, lazy=True),
        ]
    )
    work = _stop(t0)
    rows_p = pl.scan_parquet(passed_p).select(pl.len()).collect().item()
    rows_q = pl.scan_parquet(quarantine_p).select(pl.len()).collect().item()
    return {
        "work_s": work,
        "counts": {k: int(v) for k, v in counts.row(0, named=True).items()},
        "rows_passed": rows_p,
        "rows_quarantined": rows_q,
        "outputs": {"passed": str(passed_p), "quarantine": str(quarantine_p)},
    }


def run_limit_quarantine_mem(path: str, out: str) -> dict[str, Any]:
    """The other way to write (b) by hand: collect_all into memory, then write both files."""
    import polars as pl

    out_dir = Path(out)
    t0 = _start()
    lf = pl.scan_parquet(path)
    columns = lf.collect_schema().names()
    base = lf.with_row_index("_row").with_columns(_masks())
    bad = pl.any_horizontal(RULES)
    failed = pl.concat_list([pl.when(pl.col(r)).then(pl.lit(r)) for r in RULES]).list.drop_nulls()
    counts, passed, quarantine = pl.collect_all(
        [
            base.select([pl.col(r).sum() for r in RULES]),
            base.filter(bad.not_()).select(columns),
            base.filter(bad).select(
                *columns, failed.alias("_failed_checks"), pl.col("_row").cast(pl.Int64)
            ),
        ]
    )
    passed_p, quarantine_p = out_dir / "passed.parquet", out_dir / "quarantine.parquet"
    passed.write_parquet(passed_p, compression="zstd", statistics=True)
    quarantine.write_parquet(quarantine_p, compression="zstd", statistics=True)
    return {
        "work_s": _stop(t0),
        "counts": {k: int(v) for k, v in counts.row(0, named=True).items()},
        "outputs": {"passed": str(passed_p), "quarantine": str(quarantine_p)},
    }


def run_pandera(path: str, out: str) -> dict[str, Any]:
    """shared/peers/bench_validation.py run_pandera (Polars backend, lazy=True)."""
    import pandera.polars as pa
    import polars as pl
    from pandera.errors import SchemaErrors

    schema = pa.DataFrameSchema(
        {
            "id": pa.Column(pl.Int64, unique=True, nullable=False),
            "age": pa.Column(pl.Int64, pa.Check.in_range(0, 150), nullable=True),
            "income": pa.Column(pl.Float64, nullable=False),
            "score": pa.Column(pl.Float64, nullable=False),
            "category": pa.Column(pl.Utf8, pa.Check.isin(CATS), nullable=True),
            "code": pa.Column(pl.Utf8, pa.Check.str_matches(REGEX), nullable=True),
        }
    )
    t0 = _start()
    df = pl.read_parquet(path)
    counts = dict.fromkeys(RULES, 0)
    try:
        schema.validate(df, lazy=True)
    except SchemaErrors as e:
        by_col = {"age": "age_between", "category": "category_in_set", "code": "code_regex"}
        special = {
            ("income", "not_nullable"): "income_not_null",
            ("score", "not_nullable"): "score_not_null",
            ("id", "field_uniqueness"): "id_unique",
        }
        for row in e.failure_cases.group_by(["column", "check"]).len().to_dicts():
            col, chk = row["column"], str(row["check"])
            key = special.get((col, chk)) or by_col.get(col, f"{col}:{chk}")
            counts[key] = counts.get(key, 0) + int(row["len"])
    return {"work_s": _stop(t0), "counts": counts}


def run_ge(path: str, out: str) -> dict[str, Any]:
    """shared/peers/bench_validation.py run_ge (pandas source, ephemeral context)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd

    t0 = _start()
    ctx = gx.get_context(mode="ephemeral")
    ds = ctx.data_sources.add_pandas("pandas_src")
    bd = ds.add_dataframe_asset(name="table").add_batch_definition_whole_dataframe("whole")
    df = pd.read_parquet(path)
    suite = gx.ExpectationSuite(name="rules")
    exps = {
        "income_not_null": gxe.ExpectColumnValuesToNotBeNull(column="income"),
        "score_not_null": gxe.ExpectColumnValuesToNotBeNull(column="score"),
        "age_between": gxe.ExpectColumnValuesToBeBetween(column="age", min_value=0, max_value=150),
        "category_in_set": gxe.ExpectColumnValuesToBeInSet(column="category", value_set=CATS),
        "id_unique": gxe.ExpectColumnValuesToBeUnique(column="id"),
        "code_regex": gxe.ExpectColumnValuesToMatchRegex(column="code", regex=REGEX),
    }
    for e in exps.values():
        suite.add_expectation(e)
    suite = ctx.suites.add(suite)
    res = bd.get_batch(batch_parameters={"dataframe": df}).validate(suite)
    work = _stop(t0)
    by_col = {
        "income": "income_not_null",
        "score": "score_not_null",
        "age": "age_between",
        "category": "category_in_set",
        "id": "id_unique",
        "code": "code_regex",
    }
    counts = {
        by_col[r.expectation_config.kwargs["column"]]: int(r.result.get("unexpected_count", -1))
        for r in res.results
    }
    return {"work_s": work, "counts": counts}


WORKERS = {
    "ductwork-report": run_ductwork_report,
    "limit-report": run_limit_report,
    "ductwork-report-reencode": run_ductwork_report_reencode,
    "ductwork-quarantine": run_ductwork_quarantine,
    "limit-quarantine": run_limit_quarantine,
    "limit-quarantine-mem": run_limit_quarantine_mem,
    "pandera": run_pandera,
    "ge": run_ge,
}
LABELS = {
    "ductwork-report": "ductwork validate, on_fail: warn (report)",
    "limit-report": "hand-written Polars, one aggregate query (limit)",
    "ductwork-report-reencode": "ductwork validate, on_fail: warn, passed re-encoded (for comparison)",
    "ductwork-quarantine": "ductwork validate, on_fail: quarantine (+ write passed, quarantine)",
    "limit-quarantine": "hand-written Polars, collect_all + 2 sinks (limit)",
    "limit-quarantine-mem": "hand-written Polars, collect_all in memory + 2 writes (limit)",
    "pandera": "pandera, Polars backend, lazy=True (report)",
    "ge": "Great Expectations 1.x, pandas (report)",
}
PEER_TOOLS = {"pandera": "pandera", "ge": "great_expectations"}


# ----------------------------------------------------------------------------- driver
def child(python: str, worker: str, path: Path, timeout: float) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix=f"bench-{worker}-", dir=DATA_DIR))
    try:
        argv = [python, __file__, "--worker", worker, "--path", str(path), "--out", str(out)]
        env = {**os.environ, "GX_ANALYTICS_ENABLED": "false"}
        t0 = time.perf_counter()
        p = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            return {"error": p.stderr[-1500:], "wall_s": wall}
        payload: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
        payload["wall_s"] = wall
        payload["output_check"] = _output_summary(payload.get("outputs", {}))
        return payload
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    finally:
        shutil.rmtree(out, ignore_errors=True)
        os.sync()  # so one run's disk writeback does not slow the next one


def _output_summary(outputs: dict[str, str]) -> dict[str, Any]:
    """Row counts and per-check quarantine counts of the written outputs (to compare tools)."""
    if not outputs:
        return {}
    import polars as pl

    summary: dict[str, Any] = {}
    for name, p in outputs.items():
        lf = pl.scan_parquet(p)
        summary[f"{name}_rows"] = lf.select(pl.len()).collect().item()
        flat = lf.with_columns(pl.col(pl.List(pl.String)).list.join(","))
        hashes = flat.select(pl.all().hash(seed=7).sum()).collect().row(0)  # order-insensitive
        summary[f"{name}_digest"] = f"{hash(hashes) & 0xFFFFFFFF:08x}"
        if name == "quarantine":
            exploded = lf.select(pl.col("_failed_checks").explode()).drop_nulls()
            vc = exploded.group_by("_failed_checks").len().collect()
            summary["quarantine_per_check"] = {r[0]: r[1] for r in vc.iter_rows()}
            summary["quarantine_columns"] = lf.collect_schema().names()
    return summary


def has_module(python: str, module: str) -> bool:
    if not Path(python).exists():
        return False
    p = subprocess.run([python, "-c", f"import {module}"], capture_output=True, check=False)
    return p.returncode == 0


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def fmt_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeats", type=int, default=5, help="runs per ductwork/limit/pandera tool")
    ap.add_argument(
        "--ge-repeats", type=int, default=1, help="runs of GE (about 100 s each at 10M)"
    )
    ap.add_argument("--tools", default="ductwork,limit,pandera,ge")
    ap.add_argument("--peers-python", default=DEFAULT_PEERS)
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--no-write", action="store_true", help="print only; leave bench/RESULTS.md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        payload = WORKERS[a.worker](a.path, a.out)
        payload["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        payload["cpu_s"] = CPU["stop"] - CPU["start"]
        print(json.dumps(payload, default=str), flush=True)
        return

    wanted = set(a.tools.split(","))
    notes: list[str] = []
    t0 = time.perf_counter()
    path = generate(a.rows)
    print(f"data: {path} ({time.perf_counter() - t0:.1f}s)")

    plan: list[tuple[str, str]] = []  # (worker, python)
    if "ductwork" in wanted:
        plan += [("ductwork-report", sys.executable), ("ductwork-quarantine", sys.executable)]
        plan += [("ductwork-report-reencode", sys.executable)]
    if "limit" in wanted:
        plan += [("limit-report", sys.executable), ("limit-quarantine", sys.executable)]
        plan += [("limit-quarantine-mem", sys.executable)]
    for tool, module in PEER_TOOLS.items():
        if tool not in wanted:
            continue
        if has_module(a.peers_python, module):
            plan.append((tool, a.peers_python))
        else:
            notes.append(
                f"{tool} skipped: `{module}` is not importable by {a.peers_python} "
                "(set --peers-python; see the module docstring for the venv)."
            )
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w, _ in plan}
    for i in range(max(a.repeats, a.ge_repeats)):
        # interleaved and rotated, so machine load and run position hit every tool alike
        for worker, python in plan[i % len(plan) :] + plan[: i % len(plan)]:
            limit = a.ge_repeats if worker == "ge" else a.repeats
            if i >= limit:
                continue
            r = child(python, worker, path, a.timeout)
            if "error" in r:
                notes.append(f"{worker} run {i} failed: {r['error'].strip().splitlines()[-1]}")
                print(notes[-1])
                continue
            runs[worker].append(r)
            print(
                f"{worker:20s} run {i}: work {r['work_s']:.2f}s cpu {r['cpu_s']:.2f}s process {r['wall_s']:.2f}s "
                f"RSS {r['peak_rss_mib']:.0f} MiB counts {list(r['counts'].values())}"
            )

    work = {w: med([r["work_s"] for r in rs]) for w, rs in runs.items() if rs}
    rss = {w: med([r["peak_rss_mib"] for r in rs]) for w, rs in runs.items() if rs}
    cpu = {w: med([r["cpu_s"] for r in rs]) for w, rs in runs.items() if rs}

    def ratio(a_: str, b_: str) -> float | None:
        if a_ in work and b_ in work and work[b_]:
            return work[a_] / work[b_]
        return None

    def versus(a_: str, b_: str, what: str) -> str:
        r = ratio(a_, b_)
        if r is None:
            return ""
        return f"{r:.2f}x {what} (CPU {cpu[a_] / cpu[b_]:.2f}x)"

    rows = []
    for w, _ in plan:
        if w not in work:
            continue
        vs = ""
        if w == "ductwork-report":
            vs = versus(w, "limit-report", "limit; goal ≤ 1.10x")
        elif w == "ductwork-report-reencode":
            vs = versus(w, "limit-report", "limit (a), for information")
        elif w == "ductwork-quarantine":
            limits = [x for x in ("limit-quarantine", "limit-quarantine-mem") if x in work]
            if limits:
                vs = versus(w, min(limits, key=lambda x: work[x]), "the faster limit; goal ≤ 1.10x")
        elif w in ("pandera", "ge"):
            r = ratio(w, "ductwork-report")
            goal = " (goal ≥ 18x)" if w == "ge" else ""
            vs = f"ductwork is {r:.1f}x faster{goal}" if r else ""
        rows.append(
            [
                LABELS[w],
                fmt_s(work[w]),
                fmt_s(cpu[w]),
                f"{a.rows / work[w] / 1e6:.2f}",
                f"{rss[w]:.0f}",
                len(runs[w]),
                vs,
            ]
        )
    from _results import machine, table, write_section

    headers = [
        "tool",
        "read+validate+write s (median)",
        "CPU s",
        "Mrows/s",
        "peak RSS MiB",
        "runs",
        "ratio",
    ]
    perf = table(headers, rows)
    counts = table(
        ["tool", *RULES],
        [[w, *(runs[w][-1]["counts"].get(k) for k in RULES)] for w, _ in plan if runs[w]],
    )
    agree = (
        len({tuple(runs[w][-1]["counts"].get(k) for k in RULES) for w, _ in plan if runs[w]}) == 1
    )
    out_rows = []
    for w in ("ductwork-quarantine", "limit-quarantine", "limit-quarantine-mem"):
        if runs.get(w):
            oc = runs[w][-1]["output_check"]
            out_rows.append(
                [
                    w,
                    oc.get("passed_rows"),
                    oc.get("quarantine_rows"),
                    json.dumps(oc.get("quarantine_per_check", {}), sort_keys=True),
                    f"{oc.get('passed_digest')} / {oc.get('quarantine_digest')}",
                ]
            )
    outputs = table(
        ["tool", "passed rows", "quarantine rows", "quarantine rows per check", "content digests"],
        out_rows,
    )
    same_outputs = len({tuple(r[1:]) for r in out_rows}) == 1 if out_rows else False
    if "ductwork-report" in work:
        notes.append(
            "(a) in warn mode `passed` is the input unchanged: the stage hands the input artifact "
            "back and the store keeps the one object (no write), which is what the warn row times. "
            "The 'passed re-encoded' row is what rewriting it would cost, for comparison."
        )
    cmd = f"python bench/bench_validation.py --rows {a.rows} --repeats {a.repeats} --ge-repeats {a.ge_repeats}"
    body = (
        "## Validation (bench/bench_validation.py)\n\n"
        f"Re-run: `{cmd}` (pandera and GE from a separate venv: `--peers-python` or "
        f"`DUCTWORK_PEERS_PYTHON`, see the script's docstring) · {machine()}\n\n"
        f"{a.rows:,} rows x 8 columns (~1% nulls), 6 checks: 2x not_null, between, in_set, unique, "
        f"regex `{REGEX}` (data and rules of shared/peers/bench_validation.py). Timed region per run: "
        "read Parquet + validate + write outputs; each run in a fresh process, tools interleaved, "
        "median of the runs.\n\n"
        f"{perf}\n\nFailure counts (must agree): {'yes' if agree else 'NO'}\n\n{counts}\n\n"
        f"Quarantine outputs (must agree): {'yes' if same_outputs else 'NO'}\n\n{outputs}\n"
    )
    if notes:
        body += "\nNotes:\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print(body)
    if not a.no_write:
        write_section("validation", body)
        print("wrote the 'validation' section of bench/RESULTS.md")


if __name__ == "__main__":
    main()
