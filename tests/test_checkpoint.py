"""Checkpoint / resume: a killed fit resumes bit-identically; other problems are refused."""

import textwrap
import warnings

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis.selection import Box

from conftest import kill_and_resume

SCRIPT = textwrap.dedent("""
    import sys, time, warnings, logging
    import numpy as np
    import daskgmmis as dg
    from daskgmmis.selection import Box
    catalog, ckpt, out, slow = sys.argv[1:5]
    # every E-step performed is printed (the parent counts them); with slow == "1"
    # each is slowed down so the parent can kill the process mid-fit
    class Report(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("iteration"):
                print(record.getMessage(), flush=True)
                if slow == "1":
                    time.sleep(0.3)
    logging.getLogger("daskgmmis").addHandler(Report())
    logging.getLogger("daskgmmis").setLevel(logging.INFO)
    g = dg.GMM(3, 2)
    warnings.simplefilter("ignore")
    dg.fit(g, catalog, init_method="minmax", rng=7, tol=0, maxiter=25,
           sel_callback=Box(upper=[2.0, np.inf]), checkpoint=ckpt)
    g.save(out)
""")


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    t = dg.GMM(3, 2)
    t.amp = np.array([0.3, 0.4, 0.3])
    t.mean = np.array([[-3.0, 0.0], [1.0, 2.0], [2.0, -2.0]])
    t.covar = np.array([np.eye(2), np.eye(2) * 0.7, np.eye(2) * 0.5])
    X, _, _ = dg.draw(t, orig_size=8000, sel_callback=Box(upper=[2.0, np.inf]), rng=1)
    path = tmp_path_factory.mktemp("ck") / "cat.zarr"
    dg.write_catalog(path, X, chunks=2000)
    return str(path)


def test_killed_fit_resumes_bit_identical(tmp_path, catalog):
    ref_steps, seen, again_steps, a, b = kill_and_resume(tmp_path, SCRIPT, catalog,
                                                         "iteration", 6)
    # it resumed: at least the checkpointed iterations were not performed again (a
    # seeded restart from scratch would also end bit-identical, with every E-step)
    assert again_steps <= ref_steps - (seen - 1)
    for name in ("amp", "mean", "covar"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def count_estep_blocks(monkeypatch):
    """Count the E-step block tasks run in this process (threaded scheduler)."""
    from daskgmmis import kernels

    calls = []
    real = kernels.estep_block

    def counting(*args, **kwargs):
        calls.append(kwargs.get("row_offset"))
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "estep_block", counting)
    return calls


# a root seed may have a list of ints as its entropy (what a RandomState gives the estimator)
@pytest.mark.parametrize("rng", [lambda: 3, lambda: np.random.SeedSequence([3, 1, 4])],
                         ids=["int", "entropy-list"])
def test_in_process_resume_and_history(tmp_path, catalog, monkeypatch, rng):
    kw = dict(init_method="minmax", tol=0, client=None)
    full = dg.GMM(3, 2)
    calls = count_estep_blocks(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r_full = dg.fit(full, catalog, maxiter=12, rng=rng(), **kw)
        n_blocks = len(set(calls))
        full_steps = len(calls) / n_blocks
        part = dg.GMM(3, 2)
        dg.fit(part, catalog, maxiter=5, checkpoint=tmp_path / "c.ckpt", rng=rng(), **kw)
        resumed = dg.GMM(3, 2)
        del calls[:]
        r_res = dg.fit(resumed, catalog, maxiter=12, checkpoint=tmp_path / "c.ckpt",
                       rng=rng(), **kw)
        resumed_steps = len(calls) / n_blocks
    np.testing.assert_array_equal(resumed.mean, full.mean)
    np.testing.assert_array_equal(resumed.covar, full.covar)
    assert r_res.history == r_full.history and r_res.n_iter == r_full.n_iter
    # the resumed fit performed only the E-steps after the 5 checkpointed M-steps
    # (13 E-steps for 12 M-steps, plus one per rejected or stabilized mixed step)
    assert full_steps >= 13 and resumed_steps <= full_steps - 5


@pytest.mark.parametrize("change, words", [
    ({"K": 4}, "K"), ({"w": 0.1}, "w"), ({"rng": 4}, "seed"), ({"cutoff": 5.0}, "cutoff"),
    ({"data": "other"}, "N"),
])
def test_checkpoint_of_another_problem_is_refused(tmp_path, catalog, change, words):
    ckpt = tmp_path / "c.ckpt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dg.fit(dg.GMM(3, 2), catalog, init_method="minmax", rng=3, maxiter=2, checkpoint=ckpt)
    before = ckpt.read_bytes()
    data = catalog
    if change.get("data"):
        data = np.random.default_rng(0).normal(size=(500, 2))
    kw = dict(init_method="minmax", rng=change.get("rng", 3), maxiter=2, checkpoint=ckpt,
              w=change.get("w", 0.0), cutoff=change.get("cutoff"))
    with pytest.raises(dg.CheckpointError, match=words):
        dg.fit(dg.GMM(change.get("K", 3), 2), data, **kw)
    assert ckpt.read_bytes() == before          # never overwritten by another problem


def test_corrupted_checkpoint_is_a_clear_error(tmp_path, catalog):
    ckpt = tmp_path / "bad.ckpt"
    ckpt.write_bytes(b"garbage")
    with pytest.raises(dg.CheckpointError, match="not a readable"):
        dg.fit(dg.GMM(3, 2), catalog, checkpoint=ckpt, maxiter=1)
