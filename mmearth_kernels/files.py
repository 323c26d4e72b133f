"""Writing files without ever leaving a broken one, a private one, or a temporary one that outlives its writer.

Everything the project writes (data, caches, checkpoints, metrics, pictures, records) goes through here:

* :func:`write_atomically` (a file from a callback), :func:`atomic_file` (a path handed to a library that
  opens it itself, e.g. h5py) and :class:`TempDir` (a folder built in place, then renamed): the data go to a
  temporary created exclusively beside the target (``O_EXCL``, a random name: never an existing file, never
  followed through a symlink), and are renamed over the target when complete; on any failure the temporary
  is removed and the target is untouched.
* **Permissions.** ``mkstemp``/``mkdtemp`` create 0600/0700; the temporary is set to what a plain ``open``
  or ``mkdir`` would have made under the process umask (0644/0755 under umask 022, 0600/0700 under 077), so
  a data set or cache made for a team is readable by the team, and a private umask stays private.
* **Temporaries that a kill leaves.** A temporary is named ``.<target>.<random>.mmearth-tmp`` (a folder also
  holds a ``.mmearth-tmp-lock`` file) and its writer holds an exclusive ``flock`` on it (the folder's: on that
  lock file) for as long as it exists. The kernel drops the lock when the writer dies, kill -9 included, so a
  temporary of that name whose lock can be taken is provably ours and provably abandoned: the next write into
  that folder (once per process and folder) and :func:`remove_stale_temps_in` remove exactly those. A
  temporary another live process is writing (a teammate building the same cache) is locked and left alone;
  anything not named so, or a symlink, is never touched.
* :class:`WriteError`: what a failed write raises, naming the path and the reason (a full disk, no
  permission), saying that the previous file is kept.

It sits at the bottom of the package so that everything that writes shares one implementation: the weight
exports (``interop.files.save_file``), the data tools (``train.data``) and the trainer (``train.files`` re-exports
it).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import tempfile
import threading
from typing import IO, Callable, Iterator

TEMP_SUFFIX = ".mmearth-tmp"
LOCK_NAME = ".mmearth-tmp-lock"  # inside a temporary folder: its owner's lock
_LEGACY_SUFFIX = ".tmp"          # temporaries written before TEMP_SUFFIX (removed per target only)
_RANDOM = r"[A-Za-z0-9_]{6,}"    # tempfile's random part
_OURS = re.compile(r"^\..+\." + _RANDOM + re.escape(TEMP_SUFFIX) + "$")


class WriteError(OSError):
    """Writing a file failed; the message names the path and the reason, and the old file is intact."""


# -- permissions ---------------------------------------------------------------------------------------
_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (``/proc/self/status``, since 4.7);
    elsewhere by setting and restoring it (another thread creating a file in between would get 022)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        old = os.umask(0o022)
        os.umask(old)
    return old


def default_mode(directory: bool = False) -> int:
    """The mode ``open(path, "w")`` (0666) or ``os.mkdir`` (0777) gives under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


# -- temporaries -----------------------------------------------------------------------------------------
def _prefix(path: str) -> str:
    return f".{os.path.basename(os.path.normpath(path))}."


def _folder(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def _create_locked(make: Callable[[], tuple[int, str]]) -> tuple[int, str]:
    """``make()`` -> (fd, name) of a new file, then its exclusive lock. A sweeper may take the lock of a file
    created an instant ago (before ours); then it has removed it by the time we get the lock: make another."""
    while True:
        fd, name = make()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if os.fstat(fd).st_nlink and os.lstat(name).st_ino == os.fstat(fd).st_ino:
                return fd, name
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _new_temp_file(path: str) -> tuple[int, str]:
    folder = _folder(path)
    _sweep_once(folder)
    try:
        fd, tmp = _create_locked(lambda: tempfile.mkstemp(dir=folder, prefix=_prefix(path), suffix=TEMP_SUFFIX))
        os.fchmod(fd, default_mode())
    except OSError as e:
        raise WriteError(e.errno, f"cannot create a file in {folder} to write {path}: {e.strerror}") from e
    return fd, tmp


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def write_atomically(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` into an exclusive temporary file beside ``path``, flushed to disk, then renamed over it
    (while still locked: a sweeper never sees a finished temporary unlocked)."""
    fd, tmp = _new_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        _raise_write_error(path, e)
        raise


@contextlib.contextmanager
def atomic_file(path: str) -> Iterator[str]:
    """A locked temporary path beside ``path`` for a library that opens files by name (h5py: pass
    ``locking=False``, since our lock is the one that counts); renamed over ``path`` when the block ends
    normally, removed when it raises."""
    fd, tmp = _new_temp_file(path)
    try:
        yield tmp
        # the library may have replaced the file rather than written into it (safetensors does, with mode 0600):
        # the file now at the path gets the umask's mode and is flushed
        os.chmod(tmp, default_mode())
        written = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(written)
        finally:
            os.close(written)
        os.replace(tmp, path)
    except BaseException as e:
        _remove(tmp)
        if isinstance(e, OSError) and not isinstance(e, WriteError):  # the file system's (h5py: OSError); any
            _raise_write_error(path, e)  # other error is the caller's own and keeps its type and traceback
        raise
    finally:
        os.close(fd)


class TempDir:
    """A folder built under an exclusive temporary name beside ``path`` (mode from the umask), holding its
    owner's lock file; :meth:`commit` renames it to ``path``; leaving the ``with`` block without a commit
    removes it."""

    def __init__(self, path: str):
        self.target, folder = path, _folder(path)
        _sweep_once(folder)
        try:
            self.path = tempfile.mkdtemp(dir=folder, prefix=_prefix(path), suffix=TEMP_SUFFIX)
            os.chmod(self.path, default_mode(directory=True))
            lock = os.path.join(self.path, LOCK_NAME)
            self._fd, _ = _create_locked(lambda: (os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), lock))
        except OSError as e:
            raise WriteError(e.errno, f"cannot create a folder in {folder} to build {path}: {e.strerror}") from e

    def __enter__(self) -> "TempDir":
        return self

    def commit(self) -> None:
        """Rename the folder to the target (which must not exist, or be an empty folder)."""
        os.remove(os.path.join(self.path, LOCK_NAME))  # the lock fd stays open until __exit__
        os.replace(self.path, self.target)
        self.path = None

    def __exit__(self, *exc) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)


def _raise_write_error(path: str, e: BaseException) -> None:
    if isinstance(e, (OSError, RuntimeError)) and not isinstance(e, WriteError):
        raise WriteError(getattr(e, "errno", None) or errno.EIO, _explain(path, _folder(path), e)) from e


def _explain(path: str, folder: str, e: BaseException) -> str:
    reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
    try:
        st = os.statvfs(folder)
        if st.f_bavail * st.f_frsize < 64 * 2**20:  # torch.save reports a full disk as "unexpected pos"
            reason = f"{reason} (the disk holding {folder} is full: {st.f_bavail * st.f_frsize >> 20} MiB left)"
    except OSError:
        pass
    return f"could not write {path}: {reason}; the previous version (if any) is kept"


# -- stale temporaries ---------------------------------------------------------------------------------
def _remove_if_abandoned(full: str, lock: str | None = None) -> bool:
    """Remove ``full`` (a file, or with ``lock`` a folder whose lock file that is) if nobody holds its lock.
    The name is checked to still be the inode we locked, so a temporary renamed to its target in between
    is never touched."""
    probe = lock or full
    try:
        fd = os.open(probe, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: its writer is alive
        try:
            if os.lstat(probe).st_ino != os.fstat(fd).st_ino:
                return False
        except OSError:
            return False
        if lock is None:
            os.remove(full)
        else:
            shutil.rmtree(full)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _is_plain_dir(path: str) -> bool:
    return os.path.isdir(path) and not os.path.islink(path)


def _is_plain_file(path: str) -> bool:
    return os.path.isfile(path) and not os.path.islink(path)


def _names_in(folder: str) -> list[str]:
    """The folder's entries, or none if it cannot be listed (gone, not a folder, no permission)."""
    try:
        return os.listdir(folder)
    except OSError:
        return []


def remove_stale_temps_in(folder: str) -> list[str]:
    """Remove every abandoned temporary of ours in ``folder`` (files named ``.<x>.<random>.mmearth-tmp``,
    and folders so named holding an unlocked ``.mmearth-tmp-lock``); returns what was removed. A
    temporary whose writer is alive, a symlink, or anything named otherwise is left alone."""
    removed = []
    for name in _names_in(folder):
        if not _OURS.match(name):
            continue
        full = os.path.join(folder, name)
        lock = os.path.join(full, LOCK_NAME)
        if _is_plain_file(full):
            ok = _remove_if_abandoned(full)
        elif _is_plain_dir(full) and _is_plain_file(lock):
            ok = _remove_if_abandoned(full, lock)
        else:
            continue
        if ok:
            removed.append(full)
    return removed


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temporary files a killed write of ``path`` left behind (also those named ``.tmp`` by
    earlier versions); returns them."""
    folder = _folder(path)
    suffixes = f"({re.escape(TEMP_SUFFIX)}|{re.escape(_LEGACY_SUFFIX)})$"
    pattern = re.compile(re.escape(_prefix(path)) + _RANDOM + suffixes)
    removed = []
    for name in _names_in(folder):
        full = os.path.join(folder, name)
        if pattern.match(name) and _is_plain_file(full) and _remove_if_abandoned(full):
            removed.append(full)
    return removed


_SWEPT: set[tuple[int, str]] = set()


def _sweep_once(folder: str) -> None:
    """The first write of this process into ``folder`` clears what killed writers left there."""
    key = (os.getpid(), os.path.realpath(folder))
    if key not in _SWEPT:
        _SWEPT.add(key)
        remove_stale_temps_in(folder)
