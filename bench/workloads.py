"""Stage functions of the engine benchmarks (the same work as ../shared/peers/engine-anchors/wl.py)."""

from __future__ import annotations

import os

import polars as pl

N_STAGES = 100
N_BRANCHES = 8
# ~1.3 s of pure Python per branch on an idle core of this machine kind: the per-branch time of
# the engine-anchors measurement (11M iterations took 1.33 s there on a loaded machine)
BURN_N = int(os.environ.get("BURN_N", "33000000"))


def make_df() -> pl.DataFrame:
    n = 1000
    return pl.DataFrame(
        {
            "a": list(range(n)),
            "b": [i * 0.5 for i in range(n)],
            "c": [f"s{i % 97}" for i in range(n)],
            "d": [i % 7 for i in range(n)],
            "e": [i % 2 == 0 for i in range(n)],
        }
    )


def source() -> pl.DataFrame:
    return make_df()


def add_one(df: pl.LazyFrame) -> pl.LazyFrame:
    return df.with_columns(pl.col("a") + 1)


def add_one_eager(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(pl.col("a") + 1)


def burn(seed: int) -> int:
    s = 0
    for i in range(BURN_N):
        s = (s + i * (seed + 1)) % 1000003
    return s


def join(**vals: int) -> int:
    return sum(vals.values()) % 1000003
