"""Atomic file writes: models, training sets and outputs are never left half-written.

* :func:`atomic_path` — one file (or folder) written under a temporary name, then renamed.
* :func:`atomic_outputs` — several outputs of one command: all are written first and
  renamed into place together at the end, so a failure leaves none of them behind.
* :func:`check_output_path` — validate an output path before any work is done (suffix, a
  folder that exists or can be created and written, not one of the inputs).
* :func:`exclusive_lock` — one writer at a time for a file (two ``train`` runs on one model).
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from .errors import DistillSegError

MULTI_SUFFIXES = (".nii.gz", ".seg.nrrd")


def _temporary_name(path: Path) -> Path:
    """A hidden name beside ``path`` keeping its suffixes (writers choose formats by them)."""
    lower = path.name.lower()
    suffix = next((s for s in MULTI_SUFFIXES if lower.endswith(s)), path.suffix)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.tmp{os.getpid()}{path.name[len(stem):]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it over ``path``.

    The temporary name keeps the file's suffixes (``.nii.gz`` etc.) so that writers
    choosing a format by extension still work. On any exception the temporary file
    (or folder) is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        _remove(tmp)


@contextmanager
def atomic_outputs(paths: Sequence[str | os.PathLike]) -> Iterator[list[Path]]:
    """Temporary paths for several outputs, renamed into place together when the block succeeds.

    On any exception every temporary file is removed and no output is created or changed.
    """
    targets = [Path(p) for p in paths]
    temps = [_temporary_name(p) for p in targets]
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
        yield temps
        for tmp, target in zip(temps, targets):
            os.replace(tmp, target)
    finally:
        for tmp in temps:
            _remove(tmp)


def check_output_path(
    path: str | os.PathLike,
    option: str = "--out",
    suffixes: Sequence[str] | None = None,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Refuse an output path before any work: wrong suffix, a folder, an input, an unwritable place.

    Args:
        option: how the user named it (``--out``, ``--stats`` ...), for the message.
        suffixes: accepted endings (lower case), or None for any.
        inputs: paths the command reads; writing over one of them is refused.

    Raises:
        DistillSegError: naming the option, the path and what is wrong.
    """
    path = Path(path)
    if suffixes is not None and not path.name.lower().endswith(tuple(suffixes)):
        raise DistillSegError(f"{option} {path}: unsupported file type, use one of {', '.join(suffixes)}")
    if path.is_dir():
        raise DistillSegError(f"{option} {path} is a folder; give a file name")
    for source in inputs:
        if source is not None and same_file(path, source):
            raise DistillSegError(f"{option} {path} is also an input ({source}): it would be overwritten")
    check_writable_folder(path.parent, f"{option} {path}")
    check_name_length(path, option)
    return path


def check_name_length(path: Path, option: str = "--out") -> None:
    """Refuse a file name the file system cannot hold, counting the temporary name it is written
    under first (an ITK error after the whole computation otherwise)."""
    existing = Path(os.path.abspath(path.parent))
    while not existing.exists():
        existing = existing.parent
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # Windows, or no limit reported
        limit = 255
    longest = max(len(os.fsencode(path.name)), len(os.fsencode(_temporary_name(path).name)))
    if longest > limit:
        raise DistillSegError(
            f"{option} {path}: the file name is too long ({len(os.fsencode(path.name))} bytes; this file system "
            f"takes {limit}, and DistillSeg writes under a temporary name {longest - len(os.fsencode(path.name))} "
            "bytes longer first): choose a shorter name")


def check_writable_folder(folder: Path, what: str) -> None:
    """The folder exists and can be written, or can be created inside a writable ancestor."""
    existing = Path(os.path.abspath(folder))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise DistillSegError(f"{what}: cannot create the folder {folder}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DistillSegError(f"{what}: the folder {existing} is not writable")


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when two paths name one file or folder (also through links)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return a.resolve() == b.resolve()


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str = "file") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block.

    The lock is a file in the temporary folder named after ``path``'s absolute location
    (nothing is added beside ``path``, and a run killed outright leaves nothing in the
    user's folders). Another process holding it is an error naming its process id; the
    operating system releases the lock when a process dies, so a crashed run never blocks
    the next one.
    """
    path = Path(path)
    lock = lock_file(path)
    while True:
        handle = open(lock, "a+")
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise DistillSegError(
                f"another process (pid {holder}) is writing the {what} {path}: wait for it to finish, "
                "or choose another file")
        try:  # the file we locked may have been removed by a finishing holder: lock the new one
            if os.fstat(handle.fileno()).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        try:
            lock.unlink()
        except OSError:  # gone already, or (Windows) still open
            pass
        handle.close()  # closing releases the lock


def lock_file(path: Path) -> Path:
    """Where the lock of ``path`` lives: ``<temp>/distillseg-locks-<user>/<sha256 of the path>.lock``."""
    import getpass
    import hashlib
    import tempfile

    try:
        user = getpass.getuser()
    except Exception:  # no user name in this environment
        user = "user"
    folder = Path(tempfile.gettempdir()) / f"distillseg-locks-{sanitised(user)}"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(str(Path(os.path.abspath(path)).resolve()).encode()).hexdigest()[:32]
    return folder / f"{digest}.lock"


def sanitised(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "user"


def _try_lock(handle) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def write_json_atomic(path: str | os.PathLike, payload: object) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=_json_default))
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _json_default(obj: object) -> object:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
