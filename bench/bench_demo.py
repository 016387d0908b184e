"""The flights demo through ductwork vs the same work as one plain Polars script, in one run.

Goals: ductwork's first run within 1.15x of the plain script (whole processes, imports included);
a no-change re-run under 0.1x of the first run.

    python bench/bench_demo.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "examples" / "flights"))

from _results import machine, table, write_section  # noqa: E402
from prepare_data import prepare  # noqa: E402

DUCTWORK = str(Path(sys.executable).with_name("ductwork"))


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return dt, p.stdout


def inprocess_rerun(proj: Path) -> float:
    """The no-change re-run through the Python API: the engine's part, without process start."""
    import ductwork as dw

    pipe = dw.load(proj / "pipeline.yaml")
    t = time.perf_counter()
    res = dw.run(pipe)
    dt = time.perf_counter() - t
    assert {s.status for s in res.stages.values()} == {"cached"}
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    plain, first, rerun, inproc = [], [], [], []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        data = prepare(data=tmp / "data")
        for i in range(args.repeat):
            out = tmp / f"plain-out-{i}"
            dt, text = timed(
                [sys.executable, str(HERE / "plain_flights.py"), str(data), str(out)], tmp
            )
            plain.append(dt)
            proj = tmp / f"dw-{i}"
            proj.mkdir()
            shutil.copy(ROOT / "examples" / "flights" / "pipeline.yaml", proj)
            shutil.copytree(data, proj / "data")
            dt, _ = timed([DUCTWORK, "run", "--json"], proj)
            first.append(dt)
            dt, out_json = timed([DUCTWORK, "run", "--json"], proj)
            rerun.append(dt)
            summary = json.loads(out_json.splitlines()[-1])
            assert {s["status"] for s in summary["stages"]} == {"cached"}, summary
            inproc.append(inprocess_rerun(proj))
        expected = json.loads(text.replace("'", '"'))
    p, f, r = statistics.median(plain), statistics.median(first), statistics.median(rerun)
    rows = [
        ["plain Polars script (bench/plain_flights.py), whole process", f"{p:.2f} s", "1.00x", ""],
        [
            "ductwork run, first run (fresh store), whole process",
            f"{f:.2f} s",
            f"{f / p:.2f}x plain",
            "goal ≤ 1.15x",
        ],
        [
            "ductwork run, no-change re-run, whole process",
            f"{r:.2f} s",
            f"{r / f:.2f}x first run",
            "goal < 0.1x",
        ],
        [
            "no-change re-run in-process (`dw.run`, imports done)",
            f"{statistics.median(inproc) * 1000:.0f} ms",
            f"{statistics.median(inproc) / f:.3f}x first run",
            "the engine's part of the re-run",
        ],
    ]
    body = "## Flights demo vs a plain Polars script (bench/bench_demo.py)\n\n"
    body += f"Re-run: `python bench/bench_demo.py --repeat {args.repeat}` · median of {args.repeat} · {machine()}\n\n"
    body += f"Both write the same outputs: {expected['passed']:,} clean rows, {expected['quarantined']:,} quarantined flights, {expected['weather_quarantined']} quarantined weather rows.\n\n"
    body += table(["measure", "value", "ratio", "goal"], rows)
    write_section("demo", body)
    print(body)


if __name__ == "__main__":
    main()
