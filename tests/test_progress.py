"""Progress a person can see (issue 13, item 4): fit(progress=True), the estimator's
verbose, the command's restart headers and summaries, the demo's labels."""

import io
import logging
import re

import numpy as np
import pytest

import daskgmmis as dg
from daskgmmis.progress import ProgressHandler

ITER = re.compile(r"^  iter +(\d+)  mean logL +(-?\d+\.\d+)  change +(-|[+-]\d\.\d+e[+-]\d+)"
                  r"  N_orig +(\d+\.\d)  +(\d+\.\d+) s/iter$")


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(1)
    return np.concatenate([rng.normal(0, 1, (200, 2)), rng.normal(5, 1, (200, 2))])


def test_fit_progress_shows_iterations_and_a_summary_per_start(blobs, capsys):
    res = dg.fit(dg.GMM(2, 2), blobs, rng=0, n_init=2, progress=True, tol=1e-6)
    err = capsys.readouterr().err.splitlines()
    assert err.count("restart 1/2") == 1 and err.count("restart 2/2") == 1
    rows = [ITER.match(line) for line in err if line.startswith("  iter")]
    assert rows and all(rows), err
    second = err[err.index("restart 2/2"):]
    values = [ITER.match(line) for line in second if line.startswith("  iter")]
    # the second start's lines: every iteration, its logL history, N_orig = N
    assert [int(m.group(1)) for m in values] == list(range(len(values)))
    logls = [float(m.group(2)) for m in values]
    changes = [m.group(3) for m in values]
    assert changes[0] == "-" and all(
        abs(float(c) - (b - a)) < 2e-6 for a, b, c in zip(logls, logls[1:], changes[1:]))
    assert all(float(m.group(4)) == 400.0 for m in values)
    summaries = [line for line in err if line.startswith("  restart ")]
    assert len(summaries) == 2 and "iterations" in summaries[1]
    assert err[-1].startswith("best of 2: mean logL") and f"{res.logL:.10g}" in err[-1]
    # without progress: nothing on stderr, and the logger is left as it was
    level, handlers = logging.getLogger("daskgmmis").level, \
        list(logging.getLogger("daskgmmis").handlers)
    dg.fit(dg.GMM(2, 2), blobs, rng=0)
    assert capsys.readouterr().err == ""
    assert logging.getLogger("daskgmmis").level == level
    assert logging.getLogger("daskgmmis").handlers == handlers


def test_estimator_verbose_levels_and_interval(blobs, capsys):
    dg.GaussianMixture(2, random_state=0, tol=1e-8, verbose=2, verbose_interval=3).fit(blobs)
    err = capsys.readouterr().err.splitlines()
    iters = [int(ITER.match(line).group(1)) for line in err if line.startswith("  iter")]
    assert len(iters) >= 2 and all(i % 3 == 0 for i in iters), err
    dg.GaussianMixture(2, random_state=0, verbose=1).fit(blobs)
    err = capsys.readouterr().err
    assert "restart 1/1" in err and "  restart 1/1: mean logL" in err and "iter " not in err
    dg.GaussianMixture(2, random_state=0).fit(blobs)
    assert capsys.readouterr().err == ""
    with pytest.raises(dg.InputError, match="verbose_interval"):
        dg.GaussianMixture(2, verbose=2, verbose_interval=0).fit(blobs)


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_the_iteration_line_is_rewritten_in_place():
    stream = _Terminal()
    handler = ProgressHandler(stream)
    log = logging.getLogger("daskgmmis.test_progress")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        for it in range(3):
            log.info("iteration %d: mean logL %.10g (change %.3g), N_orig %.6g, %.3f s",
                     it, -1.0 + it, 0.5, 10.0, 0.01)
        log.info("restart %d/%d: done", 1, 1, extra={"daskgmmis_event": "restart_end"})
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    # three in-place rewrites, then the summary on its own line below the last one
    assert text.count("\r\x1b[2K  iter") == 3 and text.count("\n") == 2
    assert text.endswith("  iter     2  mean logL     1.000000  change +5.000e-01  N_orig"
                         "         10.0    0.010 s/iter\n  restart 1/1: done\n")
