"""Install the CPU build of PyTorch into the current environment, before its dependencies.

The ``ai`` extra needs torch (through sentence-transformers). hatch installs with uv, and uv
would take PyPI's default Linux build of torch: a CUDA build of several GB. pip, with this
machine kind's configuration, takes a local CPU wheel instead (``pip install torch==2.13.0``).
hatch runs this script as a pre-install command of the default environment, so the README's
test command works on a fresh machine; once torch is present, uv keeps it.

Elsewhere, set ``DUCTWORK_TORCH_SPEC`` (e.g. ``torch --index-url
https://download.pytorch.org/whl/cpu``) or install torch yourself first.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys


def main() -> int:
    if importlib.util.find_spec("torch") is not None:
        return 0
    spec = shlex.split(os.environ.get("DUCTWORK_TORCH_SPEC", "torch==2.13.0"))
    # uv-made environments have no pip: run the base interpreter's pip against this one.
    base = getattr(sys, "_base_executable", "") or sys.executable
    cmd = [base, "-m", "pip", "--python", sys.executable, "install", "--quiet", *spec]
    print("installing the CPU build of torch:", " ".join(spec), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
