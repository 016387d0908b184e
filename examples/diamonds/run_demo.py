"""Run the diamonds example end to end: prepare the real data offline, then `ductwork run`.

python examples/diamonds/run_demo.py [ductwork run options, e.g. --force or --json]
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from prepare_data import prepare  # noqa: E402

from ductwork.cli import main  # noqa: E402

if __name__ == "__main__":
    prepare()
    main(["run", str(HERE / "pipeline.yaml"), *sys.argv[1:]])
