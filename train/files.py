"""The trainer's file helpers, re-exported from :mod:`mmearth_kernels.files` (the one implementation, at the
bottom of the package so that weight exports and the data tools, which must not import the trainer, use it too).

Atomic writes with the user's permissions, and temporaries that a kill leaves removed by the next write into
their folder; see :mod:`mmearth_kernels.files`.
"""

from mmearth_kernels.files import (TEMP_SUFFIX, TempDir, WriteError, atomic_file, current_umask, default_mode,  # noqa: F401
                         remove_stale_temps, remove_stale_temps_in, write_atomically)

__all__ = ["TEMP_SUFFIX", "TempDir", "WriteError", "atomic_file", "current_umask", "default_mode",
           "remove_stale_temps", "remove_stale_temps_in", "write_atomically"]
