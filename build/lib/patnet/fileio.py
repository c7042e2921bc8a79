"""Writing files: atomic, with the user's umask, and file-system faults as one-line errors.

Everything the project writes goes through here: text reports, plots, exported models, checkpoint
folders. A file is written under a temporary name beside its target (same folder, same suffix, so
writers that look at the extension still work) and renamed over the target when complete. Whatever
library wrote it, the result gets the permissions the user's umask gives a new file (safetensors, for
one, creates 0600 files). A full disk, a read-only folder or a file where a folder should be becomes a
:class:`patnet.errors.UnwritablePathError` naming the path and the fix, instead of a traceback.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from .errors import UnwritablePathError

# errno -> (what went wrong, how to fix it)
_FAULTS = {
    errno.ENOSPC: ("no space is left on the device", "free some space or write to another disk"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space or write to another disk"),
    errno.EROFS: ("the file system is read-only", "choose a writable location"),
    errno.EACCES: ("permission denied", "choose a folder you can write to, or change its permissions"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to, or change its permissions"),
    errno.ENOTDIR: ("a file stands where a folder is needed", "remove that file or choose another path"),
    errno.EEXIST: ("a file stands where a folder is needed", "remove that file or choose another path"),
    errno.EISDIR: ("it is a folder", "give a file name, not a folder"),
}


def _blocking_file(path: Path) -> Path | None:
    """The existing non-folder at ``path`` or above it (what makes creating a folder there fail)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return None if candidate.is_dir() else candidate
    return None


def _concerns(exc: OSError, path: Path) -> bool:
    """Whether ``exc`` is about ``path``, its temporary twin or its folder (not about some file being read)."""
    if exc.errno not in _FAULTS:
        return False
    if exc.filename is None or exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    failed = Path(os.fsdecode(exc.filename)).absolute()
    target = path.absolute()
    return failed == target or target.parent in (failed, *failed.parents) or failed in target.parents


def unwritable(exc: OSError, path: str | os.PathLike) -> UnwritablePathError:
    """The one-line error for file-system fault ``exc`` while writing ``path``."""
    path = Path(path)
    reason, fix = _FAULTS[exc.errno]
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        blocking = _blocking_file(path)
        reason = f"{blocking} is a file, not a folder" if blocking is not None else reason
    return UnwritablePathError(f"cannot write {path}: {reason}; {fix}")


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a file-system fault (full disk, read-only or missing folder, ...) met while writing ``path`` into an
    :class:`UnwritablePathError`; other errors pass unchanged."""
    try:
        yield
    except UnwritablePathError:
        raise
    except OSError as exc:
        if not _concerns(exc, Path(path)):
            raise
        raise unwritable(exc, path) from exc


def make_directory(path: str | os.PathLike) -> Path:
    """Create folder ``path`` (and its parents) if needed; a fault is an :class:`UnwritablePathError`."""
    path = Path(path)
    with writing(path):
        path.mkdir(parents=True, exist_ok=True)
    return path


def umask() -> int:
    """The process's file-creation mask (read without changing it where Linux allows)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status") as status:
            return int(next(line for line in status if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(path: Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the mode a new one gets under the umask."""
    mask = umask()
    entries = [path] if not path.is_dir() else [path, *path.rglob("*")]
    for entry in entries:
        if not entry.is_symlink():
            with contextlib.suppress(PermissionError):  # file systems without Unix permissions refuse chmod
                os.chmod(entry, (0o777 if entry.is_dir() else 0o666) & ~mask)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block succeeds and
    removed when it fails. The parent folder is created if needed."""
    path = Path(path)
    temporary = _temporary_name(path)
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield temporary
            if temporary.exists() and not temporary.is_symlink():
                _apply_umask(temporary)
            os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            temporary.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)


def write_bytes_durable(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk (for files inside an :func:`atomic_directory`, which
    reports a fault under the folder's final name)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """A staging folder to fill; renamed to ``path`` (which must not exist) when the block succeeds, deleted
    when it fails. The rename is made durable."""
    path = Path(path)
    staging = _temporary_name(path)
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir()
            yield staging
            _apply_umask(staging)
            fsync_dir(staging)
            os.replace(staging, path)
            fsync_dir(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
