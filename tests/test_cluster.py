"""Client resolution: address / scheduler file / environment / LocalCluster, errors,
memory accounting."""

from __future__ import annotations

import json
import logging
import os
import socket
import time

import dask
import numpy as np
import pytest

from daskgmmis import InputError, InputTypeError
from daskgmmis import cluster as dc
from daskgmmis.cluster import (ClusterError, SchedulerFileError, SchedulerFileNotFoundError,
                               client_context, cluster_memory, get_client,
                               worker_peak_memory)


@pytest.fixture
def no_env_address(monkeypatch):
    monkeypatch.delenv(dc.ENV_ADDRESS, raising=False)
    with dask.config.set({"scheduler-address": None}):
        yield


def free_port() -> int:
    """A local TCP port nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_scheduler_file(path, address):
    path.write_text(json.dumps({"type": "Scheduler", "address": address, "workers": {}}))
    return path


# ------------------------------------------------------------------ resolution


def test_resolution_order(tmp_path, monkeypatch, no_env_address):
    sf = write_scheduler_file(tmp_path / "s.json", "tcp://10.1.2.3:8786")
    monkeypatch.setenv(dc.ENV_ADDRESS, "tcp://env-host:8786")
    assert dc._resolve_address("tcp://given:1", None) == ("tcp://given:1", "address")
    assert dc._resolve_address(None, sf) == ("tcp://10.1.2.3:8786", f"scheduler file {sf}")
    assert dc._resolve_address(None, None) == ("tcp://env-host:8786",
                                               f"${dc.ENV_ADDRESS}")
    monkeypatch.delenv(dc.ENV_ADDRESS)
    with dask.config.set({"scheduler-address": "tcp://config-host:8786"}):
        assert dc._resolve_address(None, None)[0] == "tcp://config-host:8786"
    assert dc._resolve_address(None, None) == (None, "local")
    with pytest.raises(InputError, match="not both"):
        dc._resolve_address("tcp://a:1", sf)
    with pytest.raises(InputTypeError, match="address"):
        dc._resolve_address(8786, None)


def test_scheduler_file_errors_are_clear(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(SchedulerFileNotFoundError, match="does not exist.*dask scheduler"):
        get_client(scheduler_file=missing)
    assert issubclass(SchedulerFileNotFoundError, FileNotFoundError)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SchedulerFileError, match="not a JSON scheduler file"):
        get_client(scheduler_file=bad)
    empty = tmp_path / "empty.json"
    empty.write_text("")                         # caught while the scheduler writes it
    with pytest.raises(SchedulerFileError, match="retry"):
        get_client(scheduler_file=empty)
    no_address = tmp_path / "noaddr.json"
    no_address.write_text(json.dumps({"type": "Scheduler", "id": "x"}))
    with pytest.raises(SchedulerFileError, match="no 'address'.*'id', 'type'"):
        get_client(scheduler_file=no_address)
    assert issubclass(SchedulerFileError, ValueError)


def test_unreachable_address_fails_within_the_timeout(tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=f"cannot reach the Dask scheduler at {address}.*1 s"):
        get_client(address, timeout=1)
    assert time.monotonic() - t0 < 6
    assert issubclass(ClusterError, ConnectionError)
    # a scheduler file left behind by a scheduler that has exited
    stale = write_scheduler_file(tmp_path / "stale.json", address)
    with pytest.raises(ClusterError, match="stale"):
        get_client(scheduler_file=stale, timeout="1s")


@pytest.mark.parametrize("address", ["foo://host:1", "tcp://", "tcp://127.0.0.1:port"])
def test_malformed_address_is_an_input_error(address):
    with pytest.raises(InputError, match="expected e.g. 'tcp://host:8786'"):
        get_client(address, timeout=1)


@pytest.mark.parametrize("kwargs", [dict(timeout=0), dict(wait_for_workers=-1),
                                    dict(dashboard=3)])
def test_bad_options(kwargs, no_env_address):
    with pytest.raises((InputError, InputTypeError)):
        get_client(n_workers=1, memory_limit="100MB", **kwargs)


# ------------------------------------------------------- existing schedulers


def test_connect_by_address_file_and_environment(cluster_client, tmp_path, monkeypatch,
                                                 caplog, no_env_address):
    caplog.set_level(logging.INFO, logger="daskgmmis")
    address = cluster_client.scheduler.address
    limits = 2 * 2 * 2**30                       # conftest: two workers of 2 GiB
    sf = write_scheduler_file(tmp_path / "s.json", address)
    monkeypatch.setenv(dc.ENV_ADDRESS, address)
    for args, source in [((address, None), "address"), ((None, sf), "scheduler file"),
                         ((None, None), f"${dc.ENV_ADDRESS}")]:
        caplog.clear()
        client = get_client(*args, wait_for_workers=2, timeout=10)
        try:
            assert client.cluster is None                # not ours: nothing to stop
            assert client.scheduler.address == address
            assert cluster_memory(client) == limits
            assert client.submit(sum, [1, 2]).result() == 3
        finally:
            client.close()
        assert f"connected to the Dask scheduler at {address} (from {source}" in caplog.text
        assert "2 workers" in caplog.text and "dashboard:" in caplog.text
    # closing those clients left the cluster running
    assert cluster_client.submit(sum, [3, 4]).result() == 7


def test_existing_client_is_passed_through_and_left_open(cluster_client):
    assert get_client(cluster_client) is cluster_client
    with client_context(cluster_client) as client:
        assert client is cluster_client
    assert cluster_client.status == "running"


def test_local_sizing_ignored_for_a_remote_scheduler_with_a_warning(cluster_client):
    with pytest.warns(UserWarning, match="n_workers, memory_limit only size a new"):
        client = get_client(cluster_client.scheduler.address, n_workers=8,
                            memory_limit="1GB", timeout=10)
    client.close()


def test_too_few_workers_within_the_timeout(cluster_client):
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match="only 2 of 5 workers joined.*1 s"):
        get_client(cluster_client.scheduler.address, wait_for_workers=5, timeout=1)
    assert time.monotonic() - t0 < 6


# ------------------------------------------------------------- LocalCluster


def test_local_sizing():
    from dask.system import CPU_COUNT
    from distributed.system import MEMORY_LIMIT

    n, t, limit = dc._local_sizing(None, None, None)
    if CPU_COUNT <= 4:
        assert (n, t) == (CPU_COUNT, 1)
    assert n * t <= CPU_COUNT
    assert limit == int(MEMORY_LIMIT * dc.MEMORY_FRACTION / n)
    assert dc._local_sizing(1, None, None)[:2] == (1, CPU_COUNT)
    assert dc._local_sizing(None, CPU_COUNT, "1GiB") == (1, CPU_COUNT, 2**30)
    assert dc._local_sizing(3, 2, 123_000_000) == (3, 2, 123_000_000)
    for bad in [dict(n_workers=0), dict(threads_per_worker=-1), dict(n_workers=1.5),
                dict(memory_limit=0), dict(memory_limit="lots"), dict(memory_limit=-5)]:
        args = {"n_workers": None, "threads_per_worker": None, "memory_limit": None, **bad}
        with pytest.raises(InputError):
            dc._local_sizing(**args)


def test_local_cluster_sized_to_the_machine_and_closed(caplog, no_env_address):
    caplog.set_level(logging.INFO, logger="daskgmmis")
    n, t, limit = dc._local_sizing(None, None, None)
    with client_context(dashboard=False) as client:
        assert client.cluster is not None
        info = client.scheduler_info(n_workers=-1)["workers"]
        assert len(info) == n
        assert {w["nthreads"] for w in info.values()} == {t}
        assert {w["memory_limit"] for w in info.values()} == {limit}
        assert cluster_memory(client) == n * limit
        pids = client.run(os.getpid)
        assert os.getpid() not in pids.values()          # worker processes, not threads
        cluster = client.cluster
        assert client.submit(sum, [1, 2]).result() == 3
    assert client.status == "closed"
    assert cluster.status.name == "closed"
    assert f"started a LocalCluster at {cluster.scheduler_address}: {n} worker processes" \
        in caplog.text


def test_get_client_returns_a_client_that_stops_its_local_cluster(no_env_address):
    from distributed import Client

    with get_client(n_workers=1, threads_per_worker=1, memory_limit="500MB",
                    dashboard=False) as client:
        assert isinstance(client, Client)
        assert cluster_memory(client) == 500_000_000
        cluster = client.cluster
        pid = next(iter(client.run(os.getpid).values()))
    assert client.status == "closed"
    assert cluster.status.name == "closed"
    with pytest.raises(ProcessLookupError):        # the worker process is gone
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)


def test_dashboard_link_answers(no_env_address, caplog):
    pytest.importorskip("bokeh")
    import urllib.request

    caplog.set_level(logging.INFO, logger="daskgmmis")
    with get_client(n_workers=1, threads_per_worker=1, memory_limit="500MB",
                    dashboard="127.0.0.1:0") as client:
        link = client.dashboard_link
        assert f"dashboard: {link}" in caplog.text      # the link logged is the real one
        with urllib.request.urlopen(link, timeout=30) as response:
            assert response.status == 200
            assert b"Dask" in response.read()


def test_no_bokeh_says_how_to_get_the_dashboard(no_env_address, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="daskgmmis")
    monkeypatch.setattr(dc, "_dashboard_available", lambda: False)
    with get_client(n_workers=1, threads_per_worker=1, memory_limit="500MB") as client:
        assert client.submit(sum, [1, 2]).result() == 3
    assert "pip install 'daskgmmis[dashboard]'" in caplog.text
    assert "dashboard: none" in caplog.text


# --------------------------------------------------------------- memory


def test_cluster_memory_counts_every_worker():
    # more workers than the handful a bare scheduler_info() used to list
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=7, threads_per_worker=1, processes=False,
                      memory_limit="100MB", dashboard_address=":0") as cl, \
            Client(cl, set_as_default=False) as client:
        assert cluster_memory(client) == 7 * 100_000_000


def _rss() -> int:
    import psutil
    return psutil.Process().memory_info().rss


def _touch(nbytes: int) -> int:
    a = np.ones(nbytes // 8)          # written, so resident
    return int(a.sum())


def test_worker_peak_memory_sees_spikes_and_resets(cluster_client):
    worker_peak_memory(cluster_client, reset=True)
    base = cluster_client.run(_rss)
    cluster_client.run(_touch, 150_000_000)
    spiked = worker_peak_memory(cluster_client, reset=True)
    after = worker_peak_memory(cluster_client)
    for w in base:
        assert spiked[w] >= base[w] + 140_000_000
        assert after[w] < spiked[w] - 100_000_000        # the spike is gone after a reset
