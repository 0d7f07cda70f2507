"""The package's layering (docs/design.md §3), enforced on the source with ``ast``.

* the module-level imports between package modules form no cycle;
* no function imports a package module (such an import hides a cycle or a
  misplaced helper), except the optional plotting extra, imported where used so
  that the package works without matplotlib;
* the pure math modules import no dask, directly or through package modules;
* only :mod:`daskgmmis.noise` branches on the noise kind string (``kind ==
  "diag"``, ``kind in ("diag", "full")``, dicts keyed by kinds): elsewhere the
  kind's class answers (docs/design.md, "Noise").
"""

import ast
import pathlib

import pytest

import daskgmmis

PKG = pathlib.Path(daskgmmis.__file__).parent
PURE = ("kernels", "stats", "mstep", "neighborhoods", "background", "acceleration",
        "validation", "stepwise", "noise")
OPTIONAL = {"plots"}          # needs matplotlib (the "plot" extra)


def module_name(path):
    rel = path.relative_to(PKG).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(parts) if parts else "__init__"


def package_imports(path):
    """(module-level package imports, function-level package imports as (module, line),
    {in_function: external top-level package names})."""
    name = module_name(path)
    pkg_parts = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    if name == "__init__":
        pkg_parts = []
    tree = ast.parse(path.read_text())
    top, inner, external = set(), [], {True: set(), False: set()}

    def resolve(node, in_function):
        out = []
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                mod = node.module or ""
                if mod == "daskgmmis":                 # from daskgmmis import x
                    out.extend(a.name for a in node.names)
                elif mod.split(".")[0] == "daskgmmis":
                    out.append(mod.split(".", 1)[1])
                else:
                    external[in_function].add(mod.split(".")[0])
                return out
            base = pkg_parts[:len(pkg_parts) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
            if node.module is None:                    # from . import x
                out.extend(".".join(base + [a.name]) for a in node.names)
            else:
                out.append(mod)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "daskgmmis":
                    out.append(a.name.split(".", 1)[1] if "." in a.name else "__init__")
                else:
                    external[in_function].add(a.name.split(".")[0])
        return out

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            func = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                mods = resolve(child, in_function)
                if in_function:
                    inner.extend((m, child.lineno) for m in mods)
                elif not _type_checking(node):
                    top.update(mods)
            visit(child, func)

    visit(tree, False)
    return top, inner, external


def _type_checking(node):
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING")


@pytest.fixture(scope="module")
def graph():
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        mods[module_name(path)] = package_imports(path)
    return mods


def normalize(mod, mods):
    """A module, or the module a name imported from a package belongs to."""
    if mod in mods:
        return mod
    return mod.rsplit(".", 1)[0] if "." in mod else "__init__"


def test_no_import_cycles(graph):
    edges = {m: {normalize(t, graph) for t in top} - {m} for m, (top, _, _) in graph.items()}
    state, stack = {}, []

    def dfs(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if t == "__init__" or t not in edges:
                continue
            if state.get(t) == "open":
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                dfs(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            dfs(m)


def test_no_function_level_imports_of_package_modules(graph):
    found = [f"{m}:{line} imports {t}" for m, (_, inner, _) in sorted(graph.items())
             for t, line in inner if normalize(t, graph) not in OPTIONAL]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("pure", PURE)
def test_pure_math_modules_import_no_dask(graph, pure):
    seen, todo = set(), [pure]
    while todo:
        m = todo.pop()
        if m in seen or m == "__init__":
            continue
        seen.add(m)
        top, _, external = graph[m]
        # the module itself: no dask anywhere; what it imports: none at import time
        names = external[False] | (external[True] if m == pure else set())
        assert not names & {"dask", "distributed", "zarr"}, (
            f"{pure} reaches dask/zarr through {m}")
        todo.extend(normalize(t, graph) for t in top)


NOISE_KINDS = {"none", "shared", "diag", "full"}
# Modules still comparing kind strings, each with the number of comparisons and why.
KIND_BRANCH_ALLOWED = {
    # the sample command's file layout: which columns/arrays a catalog or table
    # gets for the kind it stores (the catalog format's stored kinds, not a branch of
    # the noise math)
    "cli.sample": 6,
    # covariance_type == "full": scikit-learn's parameter, not a noise kind
    "skcompat": 1,
    # draw_candidates' noise draws (Cholesky for a shared matrix): being rewritten
    # with the imputation (issue 12); Noise.sample factors by eigh, other bits
    "imputation": 2,
}


def kind_branches(path):
    """(line, source) of comparisons with noise-kind strings and kind-keyed dicts."""

    def literals(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return {e.value for e in node.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        return set()

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left] + node.comparators
            kinds = set().union(*(literals(o) for o in operands)) & NOISE_KINDS
            other = " ".join(ast.unparse(o) for o in operands if not literals(o))
            # "none" is also an init_method: count it only against a kind
            if kinds - {"none"} or ("none" in kinds and "kind" in other):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Dict):
            keys = {k.value for k in node.keys
                    if isinstance(k, ast.Constant) and isinstance(k.value, str)}
            if len(keys & NOISE_KINDS) >= 2:
                found.append((node.lineno, ast.unparse(node)[:60]))
    return found


def test_kind_branches_finds_what_it_must(tmp_path):
    # the scanner itself: a comparison, a membership test and a kind-keyed dict
    src = tmp_path / "mod.py"
    src.write_text('if kind == "diag": pass\nok = kind in ("diag", "full")\n'
                   'n = {"none": 0, "full": 1}[kind]\nm = init_method == "none"\n'
                   'k = store_kind != "none"\n')
    assert sorted(line for line, _ in kind_branches(src)) == [1, 2, 3, 5]


def test_only_the_noise_module_branches_on_the_kind_string():
    over = []
    for path in sorted(PKG.rglob("*.py")):
        name = module_name(path)
        if name == "noise":
            continue
        hits = kind_branches(path)
        if len(hits) > KIND_BRANCH_ALLOWED.get(name, 0):
            over += [f"{name}:{line}: {src}" for line, src in hits]
    assert not over, ("compare noise kinds in daskgmmis.noise (a method of the kind's "
                      "class), not here:\n" + "\n".join(over))
