"""Shared fixtures: reference models, simulated catalogs and a real LocalCluster."""

import numpy as np
import pytest

import daskgmmis as dg


def make_truth(K=3, D=2, seed=0, spread=6.0):
    """A well-separated mixture with random covariances."""
    rng = np.random.default_rng(seed)
    g = dg.GMM(K, D)
    g.amp = rng.dirichlet(np.full(K, 5.0))
    g.mean = rng.uniform(-spread, spread, size=(K, D))
    A = rng.normal(size=(K, D, D)) * 0.5
    g.covar = A @ A.transpose(0, 2, 1) + 0.3 * np.eye(D)
    return g


@pytest.fixture(scope="session")
def cluster_client():
    """A real distributed LocalCluster with two worker processes."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit="2GiB") as cluster:
        with Client(cluster, set_as_default=False) as client:
            yield client
