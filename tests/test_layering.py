"""No import cycles in the packages, lazy (function-level) imports included: the layers go one way,
csrc -> mmearth_kernels.ops -> mmearth_kernels.models -> train / benchmarks, with no back-reference (models and
interop are siblings: neither imports the other; the data pipeline imports no trainer module). Imports under
``if TYPE_CHECKING:`` are type hints only and do not count. Backend names are written only where the backend
registry declares them, never in train/ or benchmarks/."""

import ast
import glob
import os
import warnings

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("mmearth_kernels", "train")


def _modules():
    out = {}
    for pkg in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, pkg)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(root, f)
                    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
                    out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _is_type_checking(node) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: str, known: set) -> set:
    tree = ast.parse(open(path).read())
    pkg = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = pkg.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1] + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in child.names)  # `from . import x` imports module x
            visit(child)

    visit(tree)
    return {m for m in found if m in known and m != name}


def _graph():
    mods = _modules()
    return {name: _imports(name, path, set(mods)) for name, path in mods.items()}


def _cycle(graph):
    """One import cycle as a list of modules, or None (a package's own __init__ importing its children is not
    a cycle: a child importing its parent package only runs the parent's __init__)."""
    state, stack = {}, []

    def dfs(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if u.startswith(v + "."):  # a submodule importing its own package
                continue
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                c = dfs(v)
                if c:
                    return c
        state[u] = 2
        stack.pop()
        return None

    for u in sorted(graph):
        if u not in state:
            c = dfs(u)
            if c:
                return c
    return None


def test_no_import_cycles():
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


def test_the_checker_finds_a_planted_cycle():
    g = _graph()
    g["mmearth_kernels.layout"] = g["mmearth_kernels.layout"] | {"mmearth_kernels.models.mpmae"}
    assert _cycle(g) is not None


# (importer, imported): modules under the first never import modules under the second (nor their __init__)
FORBIDDEN = [
    ("mmearth_kernels", "train"),                          # the library never imports the trainer
    ("mmearth_kernels.ops", "mmearth_kernels.models"),     # ops below models
    ("mmearth_kernels.ops", "mmearth_kernels.interop"),
    ("mmearth_kernels.interop", "mmearth_kernels.models"),  # interop and models are siblings
    ("mmearth_kernels.models", "mmearth_kernels.interop"),
    ("train.data", "train"),                               # the data pipeline needs no trainer module
]


def _violations(graph, importer: str, imported: str) -> list:
    """(module, import) pairs where a module under ``importer`` imports one under ``imported`` (a package's own
    modules excepted when ``importer`` lies inside ``imported``)."""
    inside = importer.startswith(imported + ".")
    return [(m, v) for m, deps in graph.items() if m == importer or m.startswith(importer + ".")
            for v in deps if (v == imported or v.startswith(imported + "."))
            and not (inside and (v == importer or v.startswith(importer + ".")))]


@pytest.mark.parametrize("importer, imported", FORBIDDEN, ids=[f"{a}-not-{b}" for a, b in FORBIDDEN])
def test_no_back_references(importer, imported):
    bad = _violations(_graph(), importer, imported)
    assert not bad, bad


@pytest.mark.parametrize("importer, imported, plant", [
    ("mmearth_kernels.models", "mmearth_kernels.interop", ("mmearth_kernels.models.minkowski",
                                                           "mmearth_kernels.interop.timm_format")),
    ("train.data", "train", ("train.data.synthetic", "train.checkpoint")),
], ids=["models-interop", "data-trainer"])
def test_the_checker_finds_a_planted_back_reference(importer, imported, plant):
    g = _graph()
    g[plant[0]] = g[plant[0]] | {plant[1]}
    assert _violations(g, importer, imported) == [plant]


def _string_constants(path: str) -> list:
    return [(n.lineno, n.value) for n in ast.walk(ast.parse(open(path).read()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _backend_names_in(paths) -> list:
    """(file, line, string) for every string constant that names a backend (``"dense"``, ``"sparse-graphed"``...)."""
    from mmearth_kernels.models.registry import BACKEND_SPECS

    names = tuple(BACKEND_SPECS)
    return [(os.path.relpath(p, REPO), line, v) for p in paths for line, v in _string_constants(p)
            if v in names or v.startswith(tuple(f"{n}-" for n in names))]


def _files(*patterns):
    return sorted({p for pattern in patterns for p in glob.glob(os.path.join(REPO, pattern), recursive=True)})


# Files another change is still moving to the registry, with what replaces the names (each run warns which still
# need their entry and which no longer do).
PENDING: dict[str, str] = {}  # files allowed to name backends for now, with what replaces them


def test_backend_names_only_in_the_registry():
    found = _backend_names_in(_files("train/*.py", "train/**/*.py", "benchmarks/*.py", "benchmarks/**/*.py"))
    bad = [f for f in found if f[0] not in PENDING]
    assert not bad, f"backend names typed outside the backend registry: {bad}"
    still = {f[0] for f in found}
    for f in sorted(PENDING):  # said on every run, so the list does not outlive the work
        warnings.warn(f"{f} still names backends (pending: {PENDING[f]})" if f in still else
                      f"{f} no longer names a backend: remove it from PENDING in tests/test_layering.py")


def test_the_backend_name_check_finds_a_planted_name(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text('BACKEND = "sparse-fused"\nMODE = "sparse-compiled-graphed"\nOTHER = "densely"\n')
    assert [(line, v) for _, line, v in _backend_names_in([str(planted)])] == [(1, "sparse-fused"),
                                                                            (2, "sparse-compiled-graphed")]
