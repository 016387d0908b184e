"""Run every benchmark in turn; each writes its own section of bench/RESULTS.md.

python bench/run_all.py [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    quick = "--quick" in sys.argv
    env = dict(os.environ)
    runs = [
        [sys.executable, str(HERE / "bench_engine.py"), *(["--quick"] if quick else [])],
        [sys.executable, str(HERE / "bench_demo.py"), "--repeat", "1" if quick else "3"],
        [
            sys.executable,
            str(HERE / "bench_validation.py"),
            *(["--rows", "1000000"] if quick else []),
        ],
        [
            sys.executable,
            str(HERE / "bench_predict.py"),
            *(["--rows", "1000000", "--small-rows", "100000", "--repeats", "1"] if quick else []),
        ],
        [
            sys.executable,
            str(HERE / "bench_tune.py"),
            *(["--repeat", "1", "--long-trials", "0"] if quick else ["--repeat", "3"]),
        ],
        [sys.executable, str(HERE / "bench_ml.py"), "--repeat", "1" if quick else "3"],
        [sys.executable, str(HERE / "bench_executors.py"), *(["--quick"] if quick else [])],
        [sys.executable, str(HERE / "bench_scale.py"), *(["--quick"] if quick else [])],
    ]
    if quick:
        env["BURN_N"] = "2000000"
    for cmd in runs:
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env)
