"""The README is a newcomer's first hour: every Python block in it runs as written,
and nothing in the repository points outside it."""

import os
import re
import subprocess
import warnings

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_blocks():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


BLOCKS = _python_blocks()


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_as_written(index, tmp_path, monkeypatch, capsys):
    pytest.importorskip("bokeh")                 # the dashboard block names the extra
    monkeypatch.chdir(tmp_path)                  # its outputs land in a scratch folder
    with warnings.catch_warnings():
        warnings.simplefilter("error", SyntaxWarning)
        code = compile(BLOCKS[index], f"README.md block {index + 1}", "exec")
    exec(code, {"__name__": f"readme_block_{index + 1}"})
    assert capsys.readouterr().out.strip()       # each block shows its user something


def test_no_file_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    offenders = []
    for name in files:
        path = os.path.join(ROOT, name)
        if not os.path.isfile(path) or os.path.getsize(path) > 2_000_000:
            continue
        with open(path, "rb") as f:
            if b"../" + b"shared" in f.read():     # spelled apart: this file is listed too
                offenders.append(name)
    assert not offenders, f"these files refer to the shared documents outside the repository: {offenders}"
