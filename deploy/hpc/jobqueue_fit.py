"""A daskgmmis fit on an HPC batch system through dask-jobqueue.

dask-jobqueue submits the Dask workers as ordinary batch jobs (SLURM here; PBS, LSF,
SGE and HTCondor clusters take the same arguments) while this script, run on a login
or head node that the compute nodes can reach, hosts the scheduler and drives the fit.

    pip install dask-jobqueue
    python deploy/hpc/jobqueue_fit.py /scratch/$USER/survey.zarr -K 20 \
        --out model-k20.npz --jobs 4 --queue normal --account myproject

Killed or pre-empted worker jobs only cost recomputation; if this process dies, run it
again with the same --checkpoint and the fit resumes.
"""

from __future__ import annotations

import argparse
import logging

import daskgmmis as dg
from daskgmmis.cluster import cluster_memory


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("catalog", help="catalog path or URL (Zarr, written by daskgmmis)")
    ap.add_argument("-K", type=int, required=True, help="number of components")
    ap.add_argument("--out", required=True, help="model file to write (.npz)")
    ap.add_argument("--checkpoint", default=None, help="default: OUT with .ckpt")
    ap.add_argument("--jobs", type=int, default=4, help="worker batch jobs (one node each)")
    ap.add_argument("--cores", type=int, default=16, help="cores per worker job")
    ap.add_argument("--memory", default="64GB", help="memory per worker job")
    ap.add_argument("--walltime", default="04:00:00")
    ap.add_argument("--queue", default=None)
    ap.add_argument("--account", default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--maxiter", type=int, default=500)
    args = ap.parse_args(argv)

    from dask_jobqueue import SLURMCluster
    from distributed import Client

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    cluster = SLURMCluster(
        cores=args.cores, processes=1, memory=args.memory, walltime=args.walltime,
        queue=args.queue, account=args.account,
        # worker temporary files on node-local disk, not on the shared filesystem
        local_directory="$TMPDIR",
        job_extra_directives=["--requeue"],
        # the same environment as this script (activate it in the job)
        job_script_prologue=["source ~/venvs/daskgmmis/bin/activate"],
    )
    cluster.scale(jobs=args.jobs)
    print(cluster.job_script())
    with Client(cluster) as client:
        # the persist-or-stream choice uses the memory of the workers present at the
        # start: wait for all of them
        client.wait_for_workers(args.jobs, timeout=3600)
        logging.info("%d workers, %.1f GB of memory limits; dashboard: %s",
                     args.jobs, cluster_memory(client) / 1e9, client.dashboard_link)
        catalog = dg.open_catalog(args.catalog)
        gmm = dg.GMM(args.K, catalog.shape[1])
        result = dg.fit(gmm, catalog, client=client, init_method="kmeans", rng=args.seed,
                        tol=args.tol, maxiter=args.maxiter,
                        checkpoint=args.checkpoint or args.out.rsplit(".", 1)[0] + ".ckpt")
        gmm.save(args.out)
        logging.info("logL %.6f after %d iterations (converged: %s); model in %s",
                     result.logL, result.n_iter, result.converged, args.out)
    cluster.close()


if __name__ == "__main__":
    main()
