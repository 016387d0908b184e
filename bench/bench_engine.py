"""Engine overhead: ductwork vs the plain hand-written loop, in one run.

W1 chain100: 100 trivial stages persisting a 1,000-row Polars frame (per-stage overhead, and the
no-change re-run as a whole process); W2 fanout8: 8 independent CPU-bound stages on 2 workers;
and the cold start of `ductwork --help`. Peer figures (Kedro, Prefect, Dagster, DVC) are the ones
measured with ../shared/peers/engine-anchors on this machine kind (notes/engine-anchors.md).

    python bench/bench_engine.py            # full (W2 takes ~30 s)
    BURN_N=2000000 python bench/bench_engine.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import polars as pl  # noqa: E402
import workloads as wl  # noqa: E402
from _results import machine, table, write_section  # noqa: E402

DUCTWORK = shutil.which("ductwork") or str(Path(sys.executable).with_name("ductwork"))
PEERS = {  # notes/engine-anchors.md, medians on this machine kind
    "kedro_per_stage_ms": 16.9,
    "prefect_per_stage_ms": 14.9,
    "dagster_per_stage_ms": 127.4,
    "dvc_per_stage_ms": 816.5,
    "dvc_rerun_s": 4.03,
    "kedro_parallel_speedup": 1.47,
    "help": {"dvc": 0.29, "kedro": 0.55, "dagster": 1.39, "prefect": 2.44},
}


def w1_yaml(n: int) -> str:
    lines = [
        "pipeline: chain100",
        "executor: {workers: 1}",
        "stages:",
        "  - {name: s000, kind: python, uses: workloads:source}",
    ]
    for i in range(1, n + 1):
        lines.append(
            f"  - {{name: s{i:03d}, kind: python, uses: workloads:add_one, inputs: {{df: s{i - 1:03d}}}}}"
        )
    return "\n".join(lines) + "\n"


def w2_yaml(workers: int, pool: str) -> str:
    lines = ["pipeline: fanout8", f"executor: {{workers: {workers}, pool: {pool}}}", "stages:"]
    for i in range(wl.N_BRANCHES):
        lines.append(
            f"  - {{name: b{i}, kind: python, uses: workloads:burn, inputs: [], params: {{args: {{seed: {i}}}, outputs: {{main: json}}}}}}"
        )
    ins = ", ".join(f"b{i}" for i in range(wl.N_BRANCHES))
    lines.append(
        f"  - {{name: total, kind: python, uses: workloads:join, inputs: [{ins}], params: {{outputs: {{main: json}}}}}}"
    )
    return "\n".join(lines) + "\n"


def project(tmp: Path, name: str, yaml: str) -> Path:
    d = tmp / name
    d.mkdir()
    shutil.copy(HERE / "workloads.py", d / "workloads.py")
    (d / "pipeline.yaml").write_text(yaml)
    return d


def run_cli(d: Path, *args: str) -> tuple[float, dict]:
    t = time.perf_counter()
    p = subprocess.run(
        [DUCTWORK, "run", str(d / "pipeline.yaml"), "--json", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "BURN_N": str(wl.BURN_N)},
    )
    wall = time.perf_counter() - t
    last = json.loads(p.stdout.strip().splitlines()[-1])
    if p.returncode != 0:
        raise SystemExit(f"ductwork failed: {p.stderr}\n{last}")
    return wall, last


def plain_parquet_chain(tmp: Path, n: int) -> float:
    data = tmp / "plain"
    data.mkdir()
    wl.make_df().write_parquet(data / "df_000.parquet")
    t = time.perf_counter()
    for i in range(1, n + 1):
        df = wl.add_one_eager(pl.read_parquet(data / f"df_{i - 1:03d}.parquet"))
        df.write_parquet(data / f"df_{i:03d}.parquet")
    dt = time.perf_counter() - t
    assert df["a"][0] == n
    return dt


def ductwork_chain_inprocess(tmp: Path, n: int, label: str) -> tuple[float, float]:
    import ductwork as dw

    d = project(tmp, label, w1_yaml(n))
    pipe = dw.load(d / "pipeline.yaml")
    t = time.perf_counter()
    res = dw.run(pipe)
    first = time.perf_counter() - t
    assert res.exit_code == 0 and res.stages[f"s{n:03d}"].status == "ok"
    t = time.perf_counter()
    res = dw.run(pipe)
    rerun = time.perf_counter() - t
    assert all(s.status == "cached" for s in res.stages.values())
    out = dw.artifact(pipe, f"s{n:03d}")
    assert out["a"][0] == n
    return first, rerun


def help_times(runs: int) -> float:
    if shutil.which("hyperfine"):
        out = Path(tempfile.mktemp(suffix=".json"))
        subprocess.run(
            [
                "hyperfine",
                "-N",
                "--warmup",
                "3",
                "--runs",
                str(runs),
                "--export-json",
                str(out),
                f"{DUCTWORK} --help",
            ],
            capture_output=True,
            check=True,
        )
        return float(json.loads(out.read_text())["results"][0]["median"])
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run([DUCTWORK, "--help"], capture_output=True, check=True)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smaller W2 (set BURN_N too)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n = wl.N_STAGES
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        # W1: in-process run time, median of --repeat fresh stores
        plain = [
            plain_parquet_chain(tmp / f"p{i}", n) if (tmp / f"p{i}").mkdir() is None else 0
            for i in range(args.repeat)
        ]
        dw_runs = [ductwork_chain_inprocess(tmp, n, f"w1_{i}") for i in range(args.repeat)]
        plain_s = statistics.median(plain)
        first_s = statistics.median(r[0] for r in dw_runs)
        rerun_s = statistics.median(r[1] for r in dw_runs)
        # W1 as whole processes through the CLI: first run and no-change re-run
        d = project(tmp, "w1_cli", w1_yaml(n))
        cli_first, _ = run_cli(d)
        cli_reruns = [run_cli(d)[0] for _ in range(args.repeat)]
        cli_rerun = statistics.median(cli_reruns)
        per_plain = plain_s / n * 1000
        per_dw = first_s / n * 1000
        rows.append(
            [
                "W1 chain100: per-stage time, plain loop with Parquet between stages",
                f"{per_plain:.2f} ms",
                "1.00x",
                "",
            ]
        )
        rows.append(
            [
                "W1 chain100: per-stage time, ductwork first run (in-process run)",
                f"{per_dw:.2f} ms",
                f"{per_dw / per_plain:.2f}x plain",
                "goal ≤ 2x plain; Kedro 16.9 ms, Prefect 14.9 ms, Dagster 127 ms, DVC 816 ms",
            ]
        )
        rows.append(
            [
                "W1 chain100: no-change re-run, in-process",
                f"{rerun_s:.3f} s",
                f"{rerun_s / first_s:.2f}x first run",
                "",
            ]
        )
        rows.append(
            ["W1 chain100: first run, whole `ductwork run` process", f"{cli_first:.2f} s", "", ""]
        )
        rows.append(
            [
                "W1 chain100: no-change re-run, whole `ductwork run` process",
                f"{cli_rerun:.2f} s",
                f"{cli_rerun / PEERS['dvc_rerun_s']:.2f}x DVC (4.03 s)",
                "goal ≤ 0.25x DVC",
            ]
        )
        # W2: fan-out of 8 CPU-bound stages
        seq = project(tmp, "w2_seq", w2_yaml(1, "thread"))
        par = project(tmp, "w2_par", w2_yaml(2, "process"))
        t0 = time.perf_counter()
        vals = [wl.burn(i) for i in range(wl.N_BRANCHES)]
        plain_loop = time.perf_counter() - t0
        from concurrent.futures import ProcessPoolExecutor

        t0 = time.perf_counter()
        with ProcessPoolExecutor(2) as ex:
            vals2 = list(ex.map(wl.burn, range(wl.N_BRANCHES)))
        plain_pool = time.perf_counter() - t0
        assert vals == vals2
        seqs, pars = [], []
        for _ in range(args.repeat):  # interleaved, median of --repeat
            seq_s, seq_sum = run_cli(seq, "--force")
            par_s, par_sum = run_cli(par, "--force")
            assert seq_sum["status"] == par_sum["status"] == "ok"
            seqs.append(seq_s)
            pars.append(par_s)
        seq_s, par_s = statistics.median(seqs), statistics.median(pars)
        rows.append(
            [f"W2 fanout8 (BURN_N={wl.BURN_N}): plain for loop", f"{plain_loop:.2f} s", "1.00x", ""]
        )
        rows.append(
            [
                "W2 fanout8: plain ProcessPoolExecutor(2)",
                f"{plain_pool:.2f} s",
                f"{plain_loop / plain_pool:.2f}x speedup",
                "",
            ]
        )
        rows.append(["W2 fanout8: ductwork workers=1 (process)", f"{seq_s:.2f} s", "", ""])
        rows.append(
            [
                "W2 fanout8: ductwork workers=2, pool=process (process)",
                f"{par_s:.2f} s",
                f"{seq_s / par_s:.2f}x speedup vs workers=1",
                "goal ≥ 1.8x; plain pool 2.07x, Kedro ParallelRunner 1.47x",
            ]
        )
    help_s = help_times(20)
    rows.append(
        [
            "`ductwork --help` cold start (median)",
            f"{help_s * 1000:.0f} ms",
            "",
            "goal < 300 ms; DVC 290, Kedro 550, Dagster 1390, Prefect 2440 ms",
        ]
    )
    body = "## Engine overhead (bench/bench_engine.py)\n\n"
    body += f"Re-run: `python bench/bench_engine.py` · {machine()}\n\n"
    body += table(["measure", "value", "ratio", "goal / peers"], rows)
    write_section("engine", body)
    print(body)


if __name__ == "__main__":
    main()
