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
from daskgmmis.acceleration import pack
from daskgmmis.checkpoint import Theta

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


# ------------------------------------------------------- 2. model member sizes

def _npy(shape, body=None, descr="<f8"):
    """A .npy member whose header claims ``shape``; it holds ``body`` (default: the
    claimed bytes when they are few, 64 bytes otherwise)."""
    if body is None:
        n = 8 * int(np.prod(shape))
        body = b"\0" * (n if n < 2**20 else 64)
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": tuple(shape)})
    return buf.getvalue() + body


def _forged_model(path, K, D, shapes, compress=False, bodies={}):
    """A model file whose header says K, D and whose members claim ``shapes``."""
    import zipfile

    meta = json.dumps({"format": "daskgmmis-model", "version": 1, "K": K, "D": D,
                       "background": None}).encode()
    mode = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as z:
        for name in ("amp", "mean", "covar"):
            z.writestr(f"{name}.npy", _npy(shapes[name], bodies.get(name)))
        z.writestr("meta.npy", _npy((len(meta),), meta, "|u1"))
    return str(path)


def test_model_member_sizes_are_read_before_the_contents(tmp_path):
    """The issue's file: amp.npy claims 5e8 zeros (4 GB) in a small file."""
    big = (500_000_000,)
    files = [
        # K, D say 2 x 2; a member claims 5e8 values
        (_forged_model(tmp_path / "a.npz", 2, 2, {"amp": big, "mean": (2, 2),
                                                 "covar": (2, 2, 2)}),
         ["header says K=2", "amp has shape (500000000,)"]),
        # K itself claims 5e8: refused before any member is read
        (_forged_model(tmp_path / "b.npz", 500_000_000, 1, {"amp": big, "mean": big + (1,),
                                                           "covar": big + (1, 1)}),
         ["header says K=500000000, D=1", "more than the file can hold"]),
        # compressed members may expand, but not beyond memory
        (_forged_model(tmp_path / "c.npz", 500_000_000, 1, {"amp": big, "mean": big + (1,),
                                                           "covar": big + (1, 1)},
                       compress=True),
         ["header says K=500000000", "more than the file can hold", "memory"]),
        # consistent header and member headers, but the member holds 64 bytes
        (_forged_model(tmp_path / "d.npz", 2, 2, {"amp": (2,), "mean": (2, 2),
                                                 "covar": (2, 2, 2)}, bodies={"covar": b""}),
         ["covar claims shape (2, 2, 2)", "member holds 0 bytes"]),
    ]
    outs = capped(f"""
        from daskgmmis.cli import main
        for p in {[f for f, _ in files]!r}:
            report(lambda: dg.GMM.load(p))
        from click.testing import CliRunner
        def info():
            r = CliRunner().invoke(main, ["info", {files[0][0]!r}])
            return r.exit_code, r.stderr.strip().splitlines()[-1]
        report(info)
        """)
    assert len(outs) == len(files) + 1
    for (path, words), out in zip(files, outs):
        refused(out, dg.ModelFileError, path, *words)
        assert out["seconds"] < 5
    # the CLI: exit 1, one error line, within the cap
    code, line = eval(outs[-1]["result"])
    assert code == 1 and "error:" in line and "amp has shape (500000000,)" in line, line


# ------------------------------------------------------------- 4. memory plan

def test_plan_estimates_follow_the_options():
    """Task memory grows with K D^2 (moments) and rows x noise; candidates with
    oversampling; the driver with K D^2 (and n_init)."""
    assert memory.task_bytes(0, 100_000, 50, "none") > 20 * 2**30      # the fit
    assert memory.task_bytes(1000, 2, 2, "full") > memory.task_bytes(1000, 2, 2, "none")
    assert (memory.task_bytes(2000, 2, 2, "diag") - memory.task_bytes(1000, 2, 2, "diag")
            == 1000 * memory.row_bytes(2, "diag"))
    assert memory.candidate_bytes(10**9 * 16384, 2, False) > 2**40    # oversampling=1e9
    assert memory.driver_bytes(100_000, 50) > 10 * 2**30


def test_plan_shrinks_the_chunks_when_that_is_enough():
    import dask.array as da

    x = da.zeros((100_000, 4), chunks=(50_000, 4))
    noise = da.ones((100_000, 4, 4), chunks=(50_000, 4, 4))
    fixed = memory.task_bytes(0, 3, 4, "full")
    limit = fixed + 10_000 * memory.row_bytes(4, "full")
    x2, n2 = memory.plan_fit(x, noise, "full", 3, 4, limit=(limit, "a test limit"))
    assert max(x2.chunks[0]) == 10_000 and n2.chunks[0] == x2.chunks[0]
    # enough memory: unchanged
    x3, n3 = memory.plan_fit(x, noise, "full", 3, 4, limit=(2**40, "plenty"))
    assert x3 is x and n3 is noise


@pytest.mark.parametrize("K, D, rows, oversampling, limit, words", [
    # the moments of K components alone exceed a task's memory
    (20_000, 50, 1000, None, int(4.5 * 2**30), ["gmm", "one block task", "K=20000",
                                                "use fewer components (K)",
                                                "workers with more memory"]),
    # the driver's copies of the parameters exceed the machine
    (100_000, 50, 1000, None, 2**30, ["gmm", "the driver needs", "K=100000",
                                      "use fewer components (K)"]),
    # not even a few hundred rows fit
    (2, 2, 50_000, None, memory.task_bytes(100, 2, 2, "none"),
     ["memory", "block task of 50000 rows", "chunk size"]),
    # oversampling=1e9: 1e9 candidates per row
    (2, 2, 1000, 1e9, 2**30, ["oversampling=1e+09", "lower oversampling"]),
])
def test_plan_refuses_naming_the_knob(K, D, rows, oversampling, limit, words):
    import dask.array as da

    x = da.zeros((rows, D), chunks=(rows, D))
    with pytest.raises(dg.InputError) as info:
        memory.plan_fit(x, None, "none", K, D, oversampling=oversampling,
                        limit=(limit, "a test limit"))
    missing = [w for w in words if w not in str(info.value)]
    assert not missing, f"{info.value} lacks {missing}"


def test_fit_refuses_what_cannot_fit_within_the_cap():
    """The issue's fits, under a 4 GiB address space: a clean InputError each,
    in seconds (before: 24 GB and killed; a bare MemoryError of 27.1 TiB; a
    list of 10**9 seeds)."""
    outs = capped("""
        from daskgmmis.selection import Box
        X = np.random.default_rng(0).normal(size=(200000, 50))
        report(lambda: dg.fit(dg.GMM(100000, 50), X, maxiter=1))
        x = X[:2000, :2]
        inside = x[Box([-1, -1], [1, 1])(x) > 0]
        report(lambda: dg.fit(dg.GMM(2, 2), inside, sel_callback=Box([-1, -1], [1, 1]),
                              oversampling=1e9, maxiter=1))
        report(lambda: dg.fit(dg.GMM(2, 2), x, n_init=10**9, maxiter=1))
        """, cap=4 * 2**30)
    assert len(outs) == 3
    refused(outs[0], dg.InputError, "K=100000", "D=50", "GiB", "use fewer components (K)")
    refused(outs[1], dg.InputError, "oversampling=1e+09", "lower oversampling")
    refused(outs[2], dg.InputError, "n_init", "1000000000 starts", "at most 10000")
    assert all(o["seconds"] < 20 for o in outs)


def test_plan_uses_the_workers_memory_limit(cluster_client):
    """With a client, a task may use its worker's memory_limit / nthreads (2 GiB
    here): a fit whose moments need more is refused naming the workers' memory,
    and the same model under a larger limit is accepted."""
    limit, what = memory.task_memory_limit(cluster_client)
    assert limit == 2 * 2**30 and "workers' memory limit" in what
    # K=25000, D=30: ~2.5 GiB of moments per task (checked first, so that a change
    # of the estimates fails here instead of starting a huge fit), ~1.7 GiB in the driver
    assert memory.task_bytes(0, 25_000, 30, "none") > 2 * 2**30
    assert memory.driver_bytes(25_000, 30) < memory.machine_memory_limit()[0]
    with pytest.raises(dg.InputError, match=r"K=25000 .* per task \(the workers' memory limit"):
        dg.fit(dg.GMM(25_000, 30), np.zeros((5000, 30)), client=cluster_client, maxiter=1)


def test_acceleration_pairs_fit_their_byte_budget():
    # a small model keeps every pair; a large one fewer; one where two pairs exceed the
    # budget none (plain EM), and the driver's estimate counts what is kept
    small = memory.packed_size(20, 5)
    theta = Theta(np.full(20, 0.05), np.zeros((20, 5)), np.array([np.eye(5)] * 20), None)
    assert small == len(pack(theta, np.ones(5)))
    assert memory.memory_pairs(small) == memory.ACCELERATION_PAIRS
    large = memory.MEMORY_BYTES // (16 * 4)
    assert memory.memory_pairs(large) == 4
    assert memory.memory_pairs(memory.MEMORY_BYTES // 16) == 0
    huge_K = 20_000                               # D = 50: 26.5 million packed floats
    assert memory.memory_pairs(memory.packed_size(huge_K, 50)) == 0
    with_pairs = memory.driver_bytes(20, 5) - 10 * memory.param_bytes(20, 5) - 512
    assert with_pairs == 3 * 2 * 8 * small * memory.ACCELERATION_PAIRS
