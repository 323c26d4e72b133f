"""The public ops, one module each; importing a module declares its op in :mod:`.registry` (the op table).

Each op takes ``impl=`` (one of :data:`IMPLS`; ``python -m mmearth_kernels.info`` lists what runs here). Every op
module of this package is imported here (so a new op is one new module), and its public function is exported
under the op's name.
"""

import importlib
import pkgutil

from .registry import IMPLS, OPS, available_impls, torch_op_index  # noqa: F401  (the op table's questions)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

globals().update({name: spec.fn for name, spec in OPS.items()})
__all__ = ["IMPLS", "available_impls", *sorted(OPS)]  # mmearth_kernels exports these
