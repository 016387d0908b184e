from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl

from ductwork.core.fingerprint import tree_digest
from ductwork.core.store import Store


def test_same_rows_same_artifact_whatever_the_chunking(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    df = pl.DataFrame({"a": list(range(10_000)), "b": ["x", "y"] * 5_000})
    chunked = pl.concat([df.slice(0, 3_000), df.slice(3_000, 7_000)], rechunk=False)
    one = store.put_table(df)
    two = store.put_table(chunked.lazy())
    assert one.sha256 == two.sha256
    assert (
        hashlib.sha256(Path(one.path).read_bytes()).hexdigest() == one.sha256
    )  # hashed as written
    assert one.bytes == Path(one.path).stat().st_size
    assert one.rows == 10_000
    assert one.schema == {"a": "Int64", "b": "String"}
    assert len(list(store.objects.iterdir())) == 1


def test_payload_name_is_its_content_hash(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    j = store.put_json({"b": 1, "a": [1, 2]})
    t = store.put_text("hello")
    d = tmp_path / "files"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "x.txt").write_text("x")
    f = store.put_files(d)
    for info in (j, t):
        assert hashlib.sha256(Path(info.path).read_bytes()).hexdigest() == info.sha256
    assert tree_digest(f.path) == f.sha256
    found = store.find(j.sha256)
    assert found is not None
    assert found.type == "json"
    assert store.find("0" * 64) is None


def test_gc_keeps_what_is_referenced(tmp_path: Path) -> None:
    store = Store(tmp_path / "s")
    keep = store.put_text("keep")
    drop = store.put_text("drop")
    res = store.gc({keep.sha256})
    assert res["objects_removed"] == 1
    assert store.has(keep.sha256, "text")
    assert not store.has(drop.sha256, "text")


WRITER = """
import sys, random
import polars as pl
from ductwork.core.store import Store
store = Store(sys.argv[1])
i = 0
while True:
    n = 400_000 + i
    store.put_table(pl.DataFrame({"a": range(n), "b": [random.random() for _ in range(n)]}))
    i += 1
"""


def test_a_writer_killed_mid_write_leaves_no_partial_artifact(tmp_path: Path) -> None:
    root = tmp_path / "s"
    script = tmp_path / "writer.py"
    script.write_text(textwrap.dedent(WRITER))
    rng = random.Random(7)
    for _ in range(5):
        p = subprocess.Popen([sys.executable, str(script), str(root)])
        time.sleep(rng.uniform(0.6, 1.5))
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    objects = list((root / "objects").iterdir())
    assert objects, "the writer never finished an artifact: make the trials longer"
    for obj in objects:
        assert hashlib.sha256(obj.read_bytes()).hexdigest() == obj.name.split(".")[0]
        assert pl.read_parquet(obj).height >= 400_000
    # what was being written when the process died stays in tmp/, which gc clears
    store = Store(root)
    store.gc({o.name.split(".")[0] for o in objects}, tmp_age_s=0)
    assert list(store.tmp.iterdir()) == []
