"""The flights demo's work written by hand as one plain Polars script (the benchmark's limit).

Same inputs, same checks, same outputs as examples/flights/pipeline.yaml, with no framework:
read, validate with quarantine, join, derive, profile, write Parquet and SQLite.

    python bench/plain_flights.py DATA_DIR OUT_DIR
"""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import polars as pl


def validate(lf: pl.LazyFrame, checks: dict[str, pl.Expr]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rows failing any check go to quarantine with the names of the checks they failed."""
    flagged = lf.with_columns(**{f"__fail_{k}": v for k, v in checks.items()}).collect()
    fails = [pl.when(pl.col(f"__fail_{k}")).then(pl.lit(k)) for k in checks]
    bad = pl.any_horizontal(pl.col(f"__fail_{k}") for k in checks)
    flag_cols = [f"__fail_{k}" for k in checks]
    passed = flagged.filter(~bad).drop(flag_cols)
    quarantine = (
        flagged.filter(bad)
        .with_columns(_failed_checks=pl.concat_list(fails).list.drop_nulls())
        .drop(flag_cols)
    )
    return passed, quarantine


def main(data: Path, out: Path) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    flights = pl.scan_parquet(data / "flights" / "*.parquet")
    con = sqlite3.connect(data / "weather.db")
    weather = pl.read_database(
        "select *, origin || '-' || year || '-' || month || '-' || day || '-' || hour as obs_key "
        "from weather where year = ?",
        con,
        execute_options={"parameters": [2013]},
        infer_schema_length=None,
    )
    con.close()
    planes = pl.scan_csv(data / "planes.csv", null_values=["NA"], infer_schema_length=None)
    w_passed, w_quar = validate(
        weather.lazy(),
        {
            "one_obs_per_hour": pl.col("obs_key").is_duplicated(),
            "temp:not_null": pl.col("temp").is_null(),
            "wind_speed:between": ~pl.col("wind_speed").is_between(0, 200)
            & pl.col("wind_speed").is_not_null(),
        },
    )
    joined = (
        flights.join(
            w_passed.lazy().select(
                "origin",
                "year",
                "month",
                "day",
                "hour",
                "temp",
                "dewp",
                "humid",
                "wind_speed",
                "precip",
                "pressure",
                "visib",
            ),
            on=["origin", "year", "month", "day", "hour"],
            how="left",
            maintain_order="left",
        )
        .join(
            planes.select(
                "tailnum", pl.col("year").alias("plane_year"), "seats", "engines", "manufacturer"
            ),
            on="tailnum",
            how="left",
            maintain_order="left",
        )
        .with_columns(
            delayed=pl.col("dep_delay") > 15,
            route=pl.col("origin") + "-" + pl.col("dest"),
            dep_hour=pl.col("hour"),
            weekday=pl.date(pl.col("year"), pl.col("month"), pl.col("day")).dt.weekday(),
            plane_age=pl.col("year") - pl.col("plane_year"),
        )
    )
    passed, quarantine = validate(
        joined,
        {
            "dep_delay:not_null": pl.col("dep_delay").is_null(),
            "arr_delay:not_null": pl.col("arr_delay").is_null(),
            "distance:between": ~pl.col("distance").is_between(0, 5000)
            & pl.col("distance").is_not_null(),
            "origin:in_set": ~pl.col("origin").is_in(["EWR", "JFK", "LGA"])
            & pl.col("origin").is_not_null(),
            "carrier:regex": ~pl.col("carrier").str.contains("^[A-Z0-9]{2}$")
            & pl.col("carrier").is_not_null(),
        },
    )
    # profile, the same statistics as the profile stage, in one select: nulls and distinct for
    # every column; min/max/mean/std and 5 quantiles for numbers; top-5 values for text/bool
    num = [c for c, t in passed.schema.items() if t.is_numeric()]
    text = [c for c, t in passed.schema.items() if t in (pl.String, pl.Boolean)]
    prof = passed.select(
        *[pl.col(c).null_count().alias(f"{c}__nulls") for c in passed.columns],
        *[pl.col(c).drop_nulls().n_unique().alias(f"{c}__distinct") for c in passed.columns],
        *[pl.col(c).min().alias(f"{c}__min") for c in num],
        *[pl.col(c).max().alias(f"{c}__max") for c in num],
        *[pl.col(c).mean().alias(f"{c}__mean") for c in num],
        *[pl.col(c).cast(pl.Float64).std().alias(f"{c}__std") for c in num],
        *[
            pl.col(c).quantile(q).alias(f"{c}__q{q}")
            for c in num
            for q in (0.05, 0.25, 0.5, 0.75, 0.95)
        ],
        *[
            pl.col(c).drop_nulls().value_counts(sort=True).head(5).implode().alias(f"{c}__top")
            for c in text
        ],
    )
    (out / "profile.json").write_text(json.dumps(prof.to_dicts()[0], default=str))
    passed.write_parquet(out / "flights_clean.parquet", compression="zstd")
    quarantine.write_parquet(out / "flights_quarantine.parquet", compression="zstd")
    db = sqlite3.connect(out / "flights.db")
    db.execute("drop table if exists flights")
    cols = passed.columns
    db.execute("create table flights (" + ", ".join(f'"{c}"' for c in cols) + ")")
    db.executemany(
        f"insert into flights values ({', '.join('?' for _ in cols)})", passed.iter_rows()
    )
    db.commit()
    db.close()
    return {
        "passed": passed.height,
        "quarantined": quarantine.height,
        "weather_quarantined": w_quar.height,
    }


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), Path(sys.argv[2])))
