"""Hostile files and options under a memory cap: a clean error, never the machine.

Each case of issue 17 runs in a subprocess whose address space is capped with
``resource.setrlimit(RLIMIT_AS)`` (``CAP`` bytes) and whose wall time is
bounded (``TIMEOUT`` s): before the fixes, these grew to 4-24 GB or hung; now
each ends with one of the package's errors (or the correct result) within the
cap. The subprocess prints the error's type and message as JSON.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis import memory

# address space of the subprocess: python + numpy + numba + dask need ~1.2 GB of
# it before any data; the hostile cases claimed 4 to 2000 GB
CAP = 3 * 2**30
TIMEOUT = 60

X = np.random.default_rng(0).normal(size=(200, 2))

PRELUDE = """
import json, resource, sys, warnings
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
warnings.simplefilter("ignore")
import numpy as np
import daskgmmis as dg
import time
def report(f):
    t0 = time.perf_counter()
    try:
        out = f()
    except BaseException as e:
        rec = {{"type": type(e).__name__, "ours": isinstance(e, dg.DaskGMMisError),
               "message": str(e)}}
    else:
        rec = {{"type": None, "result": repr(out)}}
    rec["seconds"] = time.perf_counter() - t0
    print(json.dumps(rec), flush=True)
"""


def capped(code: str, cap: int = CAP) -> list:
    """Run ``code`` (which calls ``report(f)`` once per case) under the memory cap;
    the reports, one per case (type, message, seconds)."""
    script = PRELUDE.format(cap=cap) + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=TIMEOUT)
    reports = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert reports, f"no report (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return reports


def refused(out: dict, exc: type, *words: str) -> None:
    assert out["type"] == exc.__name__, out
    assert out["ours"], out
    missing = [w for w in words if w.lower() not in out["message"].lower()]
    assert not missing, f"{out['message']!r} lacks {missing}"


def _edit(path, change):
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


# ------------------------------------------------------------ 1. claimed shapes

SHAPES = [
    # (claimed shape, claimed chunks, words): the case listed two billion
    # chunk keys and grew to 19.7 GB
    ([400, 1000000000], None, ["expected chunks along rows only"]),
    ([400, 1000000000], [50, 1000000000], ["GiB each", "could not be read"]),
    # 10**15 rows: a bare MemoryError from zarr
    ([10**15, 2], None, ["4 of its 20000000000000 chunks", "rows 200..249",
                         "claims more rows than were written"]),
]


def test_claimed_shape_is_bounded_by_the_store(tmp_path):
    paths = []
    for i, (shape, chunks, _) in enumerate(SHAPES):
        path = tmp_path / f"cat{i}.zarr"
        dg.write_catalog(path, X, chunks=50)

        def change(m, shape=shape, chunks=chunks):
            m["shape"] = shape
            if chunks:
                m["chunk_grid"]["configuration"]["chunk_shape"] = chunks
        _edit(path / "data" / "zarr.json", change)
        paths.append(str(path))
    outs = capped(f"for p in {paths!r}:\n    report(lambda: dg.open_catalog(p))\n"
                  f"report(lambda: dg.fit(dg.GMM(2, 2), {paths[2]!r}))")
    assert len(outs) == len(SHAPES) + 1
    for (_, _, words), out, path in zip(SHAPES + [SHAPES[2]], outs, paths + [paths[2]]):
        refused(out, dg.CatalogError, f"{os.path.basename(path)}/data", *words)
        assert out["seconds"] < 5
