"""The trainer's file helpers, re-exported from :mod:`train.data.files` (the one implementation: it lives in
``train.data`` so that the data tools, which must not import the trainer, use the same one).

Atomic writes with the user's permissions, and temporaries that a kill leaves removed by the next write into
their folder; see :mod:`train.data.files`.
"""

from .data.files import (TEMP_SUFFIX, TempDir, WriteError, atomic_file, current_umask, default_mode,  # noqa: F401
                         remove_stale_temps, remove_stale_temps_in, write_atomically)

__all__ = ["TEMP_SUFFIX", "TempDir", "WriteError", "atomic_file", "current_umask", "default_mode",
           "remove_stale_temps", "remove_stale_temps_in", "write_atomically"]
