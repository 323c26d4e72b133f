"""No import cycles in the packages, lazy (function-level) imports included: the layers go one way,
csrc -> mmearth_kernels.ops -> mmearth_kernels.models -> train / benchmarks. Imports under
``if TYPE_CHECKING:`` are type hints only and do not count."""

import ast
import os

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


@pytest.mark.parametrize("lower, upper", [("mmearth_kernels", "train"),
                                          ("mmearth_kernels.ops", "mmearth_kernels.models"),
                                          ("mmearth_kernels.interop", "mmearth_kernels.models")])
def test_lower_layers_never_import_upper_ones(lower, upper):
    bad = [(m, v) for m, deps in _graph().items() if m.startswith(lower) and not m.startswith(upper)
           for v in deps if v.startswith(upper)]
    assert not bad, bad
