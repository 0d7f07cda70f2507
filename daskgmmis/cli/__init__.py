"""The ``daskgmmis`` command: ingest, fit, score, sample, inspect and plot catalogs.

Every subcommand documents itself (``daskgmmis COMMAND --help``). Errors are one
line on stderr with a non-zero exit status (1 for a failure, 2 for bad usage);
``--debug`` shows the traceback instead. Outputs are written under a temporary
name and moved into place only when complete, so a failed command leaves no
partial file behind, and an existing output is never replaced without
``--overwrite``.

Progress goes to stderr through the ``daskgmmis`` logger
(:mod:`daskgmmis.progress`): a header and a one-line summary per start and, on a
terminal or with ``fit --progress``, one line per EM iteration (iteration, mean
log-likelihood per row, its change, N_orig when truncating, seconds); ``-q``
silences it, ``-v`` adds debug messages. Commands
that run on a cluster (``fit``, ``score``, ``posterior``, ``demo``) connect to
``--scheduler ADDRESS`` or ``--scheduler-file FILE``, else start a LocalCluster
(``--scheduler threads`` runs in-process on dask's threaded scheduler), and print
the dashboard link when there is one.

One module per command (``cli/fit.py`` holds ``daskgmmis fit``, ...); what they
share - the group, error display, logging, cluster options, argument parsers -
is in ``cli/_common.py``.
"""

from ._common import main
# each module registers its command on the group when imported
from . import (demo, fit, info, ingest, plot, posterior, predict, sample,  # noqa: F401
               score)

__all__ = ["main"]
