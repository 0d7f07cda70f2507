"""deploy/: manifests parse, the image is pinned and unprivileged, the commands the
manifests and scripts run exist in the CLI with those options, TLS settings work."""

from __future__ import annotations

import ast
import inspect
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import dask
import pytest
import yaml

import daskgmmis as dg

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
YAMLS = sorted(list(DEPLOY.rglob("*.yaml")) + list(DEPLOY.rglob("*.yml")))
CORE_PINS = ("numpy", "dask", "distributed", "zarr", "numba")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# ------------------------------------------------------------------ YAML


def test_deploy_has_the_expected_files():
    for rel in ["Dockerfile", "requirements.txt", "README.md", "warmup.py",
                "kubernetes/daskjob.yaml", "kubernetes/helm-values.yaml",
                "hpc/slurm_fit.sbatch", "hpc/jobqueue_fit.py", "tls/dask-tls.yaml"]:
        assert (DEPLOY / rel).is_file(), rel


@pytest.mark.parametrize("path", YAMLS, ids=[str(p.relative_to(DEPLOY)) for p in YAMLS])
def test_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict)
        if "apiVersion" in doc or "kind" in doc:        # a Kubernetes object
            assert doc.get("apiVersion") and doc.get("kind") and doc.get("metadata", {}).get(
                "name"), path


def containers(obj):
    """Every container spec (dict with image and args/command) inside a manifest."""
    if isinstance(obj, dict):
        if "image" in obj and ("args" in obj or "command" in obj):
            yield obj
        for value in obj.values():
            yield from containers(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from containers(value)


def manifests():
    return [d for p in YAMLS for d in yaml.safe_load_all(p.read_text())
            if isinstance(d, dict) and "kind" in d]


def test_daskjob_runs_daskgmmis_fit_on_one_image():
    jobs = [d for d in manifests() if d["kind"] == "DaskJob"]
    assert len(jobs) == 1
    job = jobs[0]
    assert job["apiVersion"] == "kubernetes.dask.org/v1"
    spec = job["spec"]
    runner = spec["job"]["spec"]["containers"][0]
    assert runner["args"][:2] == ["daskgmmis", "fit"]
    assert re.match(r"^[a-z0-9]+://", runner["args"][2]), "the fit reads a catalog URL"
    cluster = spec["cluster"]["spec"]
    scheduler = cluster["scheduler"]["spec"]["containers"][0]
    worker = cluster["worker"]["spec"]["containers"][0]
    assert scheduler["args"][:2] == ["dask", "scheduler"]
    assert worker["args"][:2] == ["dask", "worker"]
    # one image for scheduler, workers and the fitting client
    assert len({c["image"] for c in containers(job)}) == 1
    # workers read the catalog too: they get the same storage credentials as the job
    assert worker.get("envFrom") == runner.get("envFrom")
    # the worker's dask memory limit sits under the pod's, so dask acts before the OOM killer
    limit = worker["args"][worker["args"].index("--memory-limit") + 1]
    assert dask.utils.parse_bytes(limit) < dask.utils.parse_bytes(
        worker["resources"]["limits"]["memory"])


def test_helm_values_use_the_image_and_a_worker_command_it_has():
    values = yaml.safe_load((DEPLOY / "kubernetes/helm-values.yaml").read_text())
    images = {f"{values[r]['image']['repository']}:{values[r]['image']['tag']}"
              for r in ("scheduler", "worker")}
    job = next(d for d in manifests() if d["kind"] == "Job")
    assert images == {c["image"] for c in containers(job)}
    # the Dockerfile provides this command name
    assert values["worker"]["image"]["dask_worker"] == "dask-worker"
    assert "/usr/local/bin/dask-worker" in (DEPLOY / "Dockerfile").read_text()


# --------------------------------------------------------------- the image


def dockerfile_instructions():
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def requirement_pins() -> dict:
    pins = {}
    for line in (DEPLOY / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.+!\-]+)", line)
            assert m, f"requirements.txt: {line!r} is not pinned exactly (name==version)"
            pins[norm(m.group(1))] = m.group(2)
    return pins


def test_dockerfile_pins_base_image_and_packages_and_runs_unprivileged():
    ins = dockerfile_instructions()
    args = dict(rest.split("=", 1) for word, rest in ins if word == "ARG" and "=" in rest)
    base = next(rest for word, rest in ins if word == "FROM")
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    runs = " ".join(rest for word, rest in ins if word == "RUN")
    assert "pip install -r /tmp/requirements.txt" in runs
    assert "pip install --no-deps /src" in runs     # daskgmmis from the repository
    users = [rest for word, rest in ins if word == "USER"]
    assert users, "no USER instruction: the image would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]
    # the last USER comes after every RUN (nothing runs as root after it)
    order = [word for word, _ in ins]
    assert max(i for i, w in enumerate(order) if w == "RUN") < max(
        i for i, w in enumerate(order) if w == "USER")
    # every COPY source exists in the build context (the repository root)
    for word, rest in ins:
        if word == "COPY":
            for src in shlex.split(rest)[:-1]:
                if not src.startswith("--"):
                    assert (REPO / src).exists(), f"COPY {src}: not in the repository"


def test_pins_cover_the_core_stack_and_satisfy_pyproject():
    from packaging.requirements import Requirement

    try:
        import tomllib
    except ModuleNotFoundError:           # Python 3.10
        tomllib = pytest.importorskip("tomli")
    pins = requirement_pins()
    for name in CORE_PINS:
        assert name in pins, f"requirements.txt does not pin {name}"
    assert pins["dask"] == pins["distributed"], "dask and distributed are released together"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for spec in project["dependencies"]:
        req = Requirement(spec)
        assert norm(req.name) in pins, f"requirements.txt does not pin {req.name}"
        assert req.specifier.contains(pins[norm(req.name)], prereleases=True), (spec, pins)


def test_warmup_fills_the_numba_cache(tmp_path):
    """The Dockerfile's kernel-compilation step, run here (docker build cannot)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    out = subprocess.run([sys.executable, str(DEPLOY / "warmup.py")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "numba cache files" in out.stdout
    assert any((tmp_path / "numba").rglob("*.nbi"))


# ------------------------------------------------------ commands vs the CLI


def _join_continuations(text: str) -> list[str]:
    return text.replace("\\\n", " ").splitlines()


def cli_invocations() -> list[tuple[str, list[str]]]:
    """(where, argv) of every `daskgmmis ...` command in deploy/ manifests and scripts."""
    found = []
    for doc in manifests():
        for c in containers(doc):
            argv = list(c.get("command") or []) + list(c.get("args") or [])
            if argv and argv[0] == "daskgmmis":
                found.append((f"{doc['kind']} {doc['metadata']['name']}", argv))
    for path in [DEPLOY / "hpc/slurm_fit.sbatch", DEPLOY / "README.md"]:
        for line in _join_continuations(path.read_text()):
            line = line.strip().lstrip("$ ").strip()
            if re.match(r"daskgmmis\s+[a-z]", line):
                found.append((path.name, shlex.split(line, comments=True)))
    return found


def test_deploy_runs_daskgmmis_fit_somewhere():
    where = {w for w, argv in cli_invocations() if argv[1:2] == ["fit"]}
    assert {"DaskJob daskgmmis-fit", "Job daskgmmis-fit", "slurm_fit.sbatch"} <= where


def _cli_main():
    try:
        from daskgmmis import cli
    except ModuleNotFoundError as e:
        if e.name == "daskgmmis.cli":
            pytest.skip("CLI not present")
        raise
    return cli.main


def check_against_click(main, argv: list[str]) -> list[str]:
    """Problems of argv against the click command tree (empty: it would parse)."""
    import click

    problems = []
    name = argv[1]
    cmd = main.commands.get(name) if hasattr(main, "commands") else None
    if cmd is None:
        return [f"no subcommand {name!r} (has {sorted(getattr(main, 'commands', {}))})"]
    ctx = click.Context(cmd, info_name=name)
    options = {}
    for p in cmd.params:
        if isinstance(p, click.Option):
            for opt in p.opts + p.secondary_opts:
                options[opt] = p
    arguments = [p for p in cmd.params if isinstance(p, click.Argument)]
    positionals, seen = [], set()
    tokens = argv[2:]
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("-") and len(tok) > 1 and not re.fullmatch(r"-\d.*", tok):
            opt, eq, inline = tok.partition("=")
            if opt in ("--help", "-h"):
                i += 1
                continue
            param = options.get(opt)
            if param is None:
                problems.append(f"{name}: no option {opt}")
                i += 1
                continue
            seen.add(param.name)
            if param.is_flag or param.count:
                i += 1
                continue
            value = inline if eq else (tokens[i + 1] if i + 1 < len(tokens) else None)
            if value is None:
                problems.append(f"{name}: {opt} needs a value")
            elif "$" not in value:           # shell variables are filled at run time
                try:
                    param.type.convert(value, param, ctx)
                except click.BadParameter as e:
                    problems.append(f"{name}: {opt} {value!r}: {e.message}")
            i += 1 if eq else 2
        else:
            positionals.append(tok)
            i += 1
    if len(positionals) > len(arguments):
        problems.append(f"{name}: {len(positionals)} arguments {positionals}, takes "
                        f"{len(arguments)}")
    required = [a for a in arguments if a.required]
    if len(positionals) < len(required):
        problems.append(f"{name}: missing argument(s) {[a.name for a in required]}")
    for p in cmd.params:
        if isinstance(p, click.Option) and p.required and p.name not in seen:
            problems.append(f"{name}: missing required option {p.opts[0]}")
    return problems


def test_commands_exist_in_the_cli_with_those_options():
    main = _cli_main()
    invocations = cli_invocations()
    assert invocations
    problems = {f"{where}: {' '.join(argv)}": check_against_click(main, argv)
                for where, argv in invocations}
    assert not {k: v for k, v in problems.items() if v}


def test_the_checker_catches_wrong_commands():
    main = _cli_main()
    assert check_against_click(main, ["daskgmmis", "nosuchcommand"])
    assert check_against_click(main, ["daskgmmis", "fit", "cat.zarr", "-K", "3", "--out", "m.npz",
                                      "--no-such-option", "1"])
    assert check_against_click(main, ["daskgmmis", "fit", "cat.zarr", "-K", "three",
                                      "--out", "m.npz"])
    assert check_against_click(main, ["daskgmmis", "fit", "cat.zarr", "-K", "3"])   # no --out
    assert not check_against_click(main, ["daskgmmis", "fit", "cat.zarr", "-K", "$K", "--out",
                                          "m.npz", "--scheduler-file", "s.json"])


# ---------------------------------------------------------- Python scripts


def test_jobqueue_script_uses_existing_api():
    from daskgmmis import cluster as dc

    tree = ast.parse((DEPLOY / "hpc/jobqueue_fit.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "daskgmmis.cluster":
            for alias in node.names:
                assert hasattr(dc, alias.name), alias.name
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "dg"):
            target = getattr(dg, node.func.attr)
            params = inspect.signature(target).parameters
            for kw in node.keywords:
                assert kw.arg in params, f"dg.{node.func.attr} has no argument {kw.arg}"
    fits = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute) and n.func.attr == "fit"]
    assert fits and any(k.arg == "client" for k in fits[0].keywords)


def test_slurm_script_is_valid_bash():
    bash = shutil.which("bash")
    assert bash
    out = subprocess.run([bash, "-n", str(DEPLOY / "hpc/slurm_fit.sbatch")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = (DEPLOY / "hpc/slurm_fit.sbatch").read_text()
    assert "dask scheduler --scheduler-file" in text
    assert "dask worker --scheduler-file" in text


# --------------------------------------------------------------------- TLS


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}.{k}" if prefix else k
        out.update(_flatten(v, key) if isinstance(v, dict) else {key: v})
    return out


def make_certificates(root: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and one certificate signed by it (openssl command line)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found")
    ca, ca_key = root / "ca.pem", root / "ca-key.pem"
    cert, key, csr = root / "cert.pem", root / "key.pem", root / "req.csr"
    ext = root / "ext.cnf"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for cmd in (
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key,
         "-out", ca, "-days", "2", "-subj", "/CN=daskgmmis-test-ca"],
        [openssl, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "2", "-extfile", ext],
    ):
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True, timeout=60)
    return ca, cert, key


def test_tls_configuration_of_the_readme_secures_the_cluster(tmp_path):
    from distributed import LocalCluster

    from daskgmmis.cluster import ClusterError, get_client

    ca, cert, key = make_certificates(tmp_path)
    settings = _flatten(yaml.safe_load((DEPLOY / "tls/dask-tls.yaml").read_text()))
    # the shipped file's paths, pointed at the test certificates
    for name, value in list(settings.items()):
        if name.endswith("ca-file"):
            settings[name] = str(ca)
        elif name.endswith(".cert"):
            settings[name] = str(cert)
        elif name.endswith(".key"):
            settings[name] = str(key)
    assert settings["distributed.comm.require-encryption"] is True
    with dask.config.set(settings):
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                          protocol="tls://", dashboard_address=":0") as cluster:
            address = cluster.scheduler_address
            assert address.startswith("tls://")
            client = get_client(address, timeout=10)
            try:
                assert client.submit(sum, [1, 2]).result() == 3
            finally:
                client.close()
            with pytest.raises(ClusterError, match="refus"):      # plain TCP is refused
                get_client(address.replace("tls://", "tcp://"), timeout=2)
            # a client without the certificates cannot talk to it
            with dask.config.set({"distributed.comm.tls.ca-file": None,
                                  "distributed.comm.tls.client.cert": None,
                                  "distributed.comm.tls.client.key": None}):
                with pytest.raises(ClusterError, match="TLS"):
                    get_client(address, timeout=2)
