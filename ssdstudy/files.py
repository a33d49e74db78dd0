"""Writing files so that a reader never sees half of one.

Every result, checkpoint and notebook is written to a temporary file with a unique name
in the target's own folder (so that two writers never share one, and the final rename
stays on one file system), then moved into place with :func:`os.replace`, which is
atomic. A failed write leaves the target as it was and removes its temporary file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Ending of every temporary file this module makes (ignored by git).
TMP_SUFFIX = ".tmp"


@contextmanager
def atomic_path(path: str | os.PathLike[str], suffix: str = TMP_SUFFIX) -> Iterator[Path]:
    """Yield a new, unique temporary path beside ``path``; on leaving the block without
    an error, move it onto ``path``; on an error, remove it.

    >>> with atomic_path(folder / "metrics.json") as tmp:   # doctest: +SKIP
    ...     tmp.write_text("{}")

    Args:
        path: the file to write.
        suffix: how the temporary name ends (a writer that infers the format from the
            name, such as ``numpy.savez``, needs its own ending).
    """
    path = Path(path)
    tmp = temporary_beside(path, suffix)
    try:
        yield tmp
        with open(tmp, "rb") as written:  # on disk before it takes the target's name
            os.fsync(written.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temporary_beside(path: Path, suffix: str = TMP_SUFFIX) -> Path:
    """Create and return a new empty file with a unique name in ``path``'s folder
    (made if missing): ``.NAME.<random><suffix>``, hidden, with the permissions a new
    file of this process would get (``mkstemp`` alone makes it private)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    os.chmod(name, 0o666 & ~_UMASK)
    return Path(name)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: The process's umask, read once (reading it means setting it, which is not thread-safe).
_UMASK = _umask()
