"""Writing files without ever leaving a broken one or touching what is not ours.

* :func:`write_atomically`: write to a temporary file created exclusively beside the target (``O_EXCL``,
  a random name: never an existing file, never followed through a symlink), then rename it over the
  target; on any failure the temporary file is removed and the target is untouched. A kill -9 can leave
  the temporary file behind; its name says whose it is (``.<target>.<random>.tmp``) and
  :func:`remove_stale_temps` clears such leftovers on the next run.
* :class:`WriteError`: what a failed write raises, naming the path and the reason (a full disk, no
  permission), saying that the previous file is kept.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from typing import Callable, IO


class WriteError(OSError):
    """Writing a file failed; the message names the path and the reason, and the old file is intact."""


def _temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}."


def write_atomically(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` into an exclusive temporary file beside ``path``, flushed to disk, then renamed over it."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temp_prefix(path), suffix=".tmp")
    except OSError as e:
        raise WriteError(e.errno, f"cannot create a file in {folder} to write {path}: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.remove(tmp)
        except OSError:
            pass
        if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, WriteError):
            raise WriteError(getattr(e, "errno", None) or errno.EIO, _explain(path, folder, e)) from e
        raise


def _explain(path: str, folder: str, e: BaseException) -> str:
    reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
    try:
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < 64 * 2**20:  # torch.save reports a full disk as "unexpected pos"
            reason = f"{reason} (the disk holding {folder} is full: {st.f_bavail * st.f_frsize >> 20} MiB left)"
    except OSError:
        pass
    return f"could not write {path}: {reason}; the previous version (if any) is kept"


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temporary files a killed :func:`write_atomically` of ``path`` left behind; returns them."""
    folder = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(_temp_prefix(path)) + r"[A-Za-z0-9_]{6,}\.tmp$")
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        full = os.path.join(folder, name)
        if pattern.match(name) and os.path.isfile(full) and not os.path.islink(full):
            try:
                os.remove(full)
                removed.append(full)
            except OSError:
                pass
    return removed
