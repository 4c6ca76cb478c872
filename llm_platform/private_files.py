"""The platform's own directory (VAR_DIR) and the secrets it keeps there, readable by the service's user alone."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

PRIVATE_UMASK = 0o077


def private_dir(path: Path) -> None:
    """Create ``path`` as 0700, or tighten it (and the files directly in it) when this user owns them.

    The directory's mode is what keeps the SQLite database, sessions and secrets inside from
    other local users; files an older version left world-readable are tightened too.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        for entry in (path, *(child for child in path.iterdir() if child.is_file() and not child.is_symlink())):
            info = entry.stat()
            if info.st_uid == os.getuid() and info.st_mode & 0o077:
                entry.chmod(stat.S_IMODE(info.st_mode) & 0o700)
    except OSError:
        # A directory the operator prepared and this user cannot list or change: theirs to keep.
        pass


def private_secret(path: Path, make: str) -> str:
    """The secret stored at ``path``, created 0600 with ``make`` if missing.

    Written to a private temporary file and linked into place, so the file never exists
    readable by others or half-written, and of two processes starting at once the first wins.
    """
    if not path.exists():
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: 0600
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(make)
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(temporary)
    return path.read_text().strip()
