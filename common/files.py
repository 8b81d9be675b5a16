"""Files that are whole or absent, names that stay inside their root, folder locks, and hashes.

Every stage writes through ``atomic_write_text`` (temp file, fsync, rename), so a reader
sees either the old content or the whole new one; ``folder_lock`` keeps two jobs out of
one sweep folder; ``sha256_file`` is the one hash every manifest records.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from common.config import ConfigError


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a file so that a reader sees either the old content or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def publish_folder(tmp: Path, dest: Path) -> None:
    """Make the finished folder ``tmp`` appear as ``dest`` in one rename, its data on disk first (a reader
    sees the old ``dest`` or the whole new one, never a partial folder)."""
    for p in tmp.rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}")


def check_name(kind: str, name: str) -> str:
    """``name`` when it is one folder name (it becomes runs/<name>/ or similar), else a ConfigError: a name
    such as ``../../somewhere`` or ``a/b`` would write outside its root."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"{kind} name {name!r} must be a single folder name (letters, digits and . _ - @ +, "
                          "not starting with a dot), not a path")
    return name


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""


@contextlib.contextmanager
def folder_lock(folder: Path, what: str):
    """Hold ``folder/.lock`` (an advisory ``flock``) while writing into ``folder``: a second sweep or export
    on the same folder stops at once and says who holds it. The kernel drops the lock when its holder
    exits, also on kill -9, so a resumed job never finds a stale lock."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ".lock"
    fh = open(path, "a+")  # noqa: SIM115 - held open for the duration of the lock
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise FolderBusy(f"{folder} is in use by {holder}; wait for it to finish or stop it") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"{what} (pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})")
        fh.flush()
        yield
    finally:
        fh.close()
