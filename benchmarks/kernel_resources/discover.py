"""Which Triton kernels the package defines, found by walking it (never a list typed by hand).

Every module of ``mmearth_kernels.triton_kernels`` is imported and searched for module-level Triton objects
(``JITFunction``, ``Autotuner``: any ``KernelInterface``) defined there. A jit function that another jit function
of the package calls is a device helper (compiled into its callers); the others are kernels, and every kernel must
be reached by a launch of ``scenarios.py`` (else the tool says which one is missing).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import textwrap

from triton.runtime.jit import JITFunction, KernelInterface

PACKAGE = "mmearth_kernels.triton_kernels"


def triton_modules() -> list:
    pkg = importlib.import_module(PACKAGE)
    return [importlib.import_module(f"{PACKAGE}.{m.name}") for m in pkgutil.iter_modules(pkg.__path__)]


def jit_function(obj) -> JITFunction | None:
    """The JITFunction under an object (an Autotuner wraps one, possibly through heuristics), or None."""
    while obj is not None and not isinstance(obj, JITFunction):
        obj = getattr(obj, "fn", None)
    return obj


def defined_jit_objects() -> dict[str, object]:
    """``{"module.name": JITFunction or Autotuner}`` for every Triton function defined (not imported) in the
    package; the short module name (``grn``, ``sparse_dwconv``) keeps the names readable."""
    out = {}
    for mod in triton_modules():
        for name, obj in vars(mod).items():
            fn = jit_function(obj) if isinstance(obj, KernelInterface) else None
            if fn is not None and fn.fn.__module__ == mod.__name__:
                out[f"{mod.__name__.rsplit('.', 1)[-1]}.{name}"] = obj
    return out


def _called_jit_functions(fn: JITFunction) -> list[JITFunction]:
    """The jit functions that ``fn``'s body calls by name (resolved in its module's globals)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn.fn)))
    called = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            target = fn.fn.__globals__.get(node.func.id)
            if isinstance(target, JITFunction):
                called.append(target)
    return called


def kernels() -> dict[str, object]:
    """The launchable kernels: defined jit objects that no jit function of the package calls."""
    objs = defined_jit_objects()
    helpers = {id(callee) for obj in objs.values() for callee in _called_jit_functions(jit_function(obj))}
    return {name: obj for name, obj in objs.items() if id(jit_function(obj)) not in helpers}


def name_of(kernel_obj) -> str:
    """The ``module.name`` of a kernel object (JITFunction or Autotuner) defined in the package."""
    fn = jit_function(kernel_obj)
    return f"{fn.fn.__module__.rsplit('.', 1)[-1]}.{fn.fn.__name__}"
