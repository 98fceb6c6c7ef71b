"""Files and folders put into place whole: a reader (another process, a sweep worker) sees the
old version or the new one, never a half-written one, and two writers never share a temp."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes, fsync: bool = False) -> None:
    """Write `data` to `path` through a temp file of its own in the same folder (so the rename
    stays on one file system), then os.replace: atomic on POSIX and Windows. Two writers racing
    each write their own temp; the last rename wins with a whole file. `fsync`: flush the data
    to disk before the rename, for a file that must survive a power loss (caches need not)."""
    path = Path(path)
    # mkstemp makes the temp owner-only; the file keeps its mode, a new one gets the usual 644
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def staged_dir(path: str | Path):
    """A fresh folder beside `path` to write into; when the block ends, renamed to `path`
    whole (anything at `path` before is removed first). Where another process put its own
    `path` in place between that removal and the rename, its folder stays and this one is
    dropped: both wrote the same thing (a cache). On an error the staged folder is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        yield staged
        shutil.rmtree(path, ignore_errors=True)
        try:
            os.replace(staged, path)
        except OSError:  # a non-empty folder is there again: another process's
            if not path.is_dir():
                raise
            shutil.rmtree(staged, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
