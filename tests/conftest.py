"""Shared fixtures: reference models, simulated catalogs and a real LocalCluster."""

import contextlib

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis import em


def make_truth(K=3, D=2, seed=0, spread=6.0):
    """A well-separated mixture with random covariances."""
    rng = np.random.default_rng(seed)
    g = dg.GMM(K, D)
    g.amp = rng.dirichlet(np.full(K, 5.0))
    g.mean = rng.uniform(-spread, spread, size=(K, D))
    A = rng.normal(size=(K, D, D)) * 0.5
    g.covar = A @ A.transpose(0, 2, 1) + 0.3 * np.eye(D)
    return g


@contextlib.contextmanager
def checkpoint_states(monkeypatch, *names):
    """Record the EM state's attributes ``names`` at every checkpoint save of the fits
    inside the block (given a ``checkpoint`` path): ``{n_iter: values}``, the last save
    of each iteration. Where a resume test stops depends on rounding; it is read here."""
    saved = {}
    real_save = em.save_checkpoint

    def record(path, state, fingerprint):
        saved[state.n_iter] = tuple(getattr(state, name) for name in names)
        real_save(path, state, fingerprint)

    monkeypatch.setattr(em, "save_checkpoint", record)
    try:
        yield saved
    finally:
        monkeypatch.setattr(em, "save_checkpoint", real_save)


@pytest.fixture(scope="session")
def cluster_client():
    """A real distributed LocalCluster with two worker processes."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="2GiB") as cluster:
        with Client(cluster, set_as_default=False) as client:
            yield client


def kill_and_resume(tmp_path, script: str, catalog: str, marker: str, kill_after: int):
    """Run a fit script three times: uninterrupted, killed, resumed from its checkpoint.

    ``script`` takes ``catalog ckpt out slow`` and prints one line per E-step (with
    ``slow == "1"`` each is slowed down); lines starting with ``marker`` are counted.
    The second run is SIGKILLed after ``kill_after`` marked lines; the third resumes.

    Returns
    -------
    (marked lines of the full run, of the killed run, of the resumed run,
     model of the full run, model of the resumed run)
    """
    import os
    import signal
    import subprocess
    import sys

    path = tmp_path / "fit.py"
    path.write_text(script)

    def run(ckpt, out, slow):
        return subprocess.Popen([sys.executable, str(path), catalog, str(ckpt), str(out), slow],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)

    def marked(proc):
        n = sum(line.startswith(marker) for line in proc.stdout)
        assert proc.wait(timeout=300) == 0
        return n

    ref = marked(run(tmp_path / "ref.ckpt", tmp_path / "ref.npz", "0"))
    ckpt = tmp_path / "run.ckpt"
    proc = run(ckpt, tmp_path / "run.npz", "1")
    seen = 0
    for line in proc.stdout:
        seen += line.startswith(marker)
        if seen >= kill_after:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert ckpt.exists() and not (tmp_path / "run.npz").exists()
    again = marked(run(ckpt, tmp_path / "run.npz", "0"))
    return (ref, seen, again, dg.GMM.load(tmp_path / "ref.npz"),
            dg.GMM.load(tmp_path / "run.npz"))
