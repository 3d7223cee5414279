"""Files written whole or not at all: a temporary file in the same folder, flushed to disk, then
renamed. Standard library only, so any tool (the TensorRT engine builder in a bare image included)
can use it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """Write `obj` as JSON to `path` so that the file is either whole or absent.

    The data goes to a temporary file in the same folder, is flushed to disk, then renamed. A NaN
    or infinity is refused (ValueError) rather than written as a token no JSON parser reads.
    """
    write_bytes_atomic(path, json.dumps(obj, ensure_ascii=False, allow_nan=False).encode("utf-8"))


def file_mode() -> int:
    """The mode a plainly created file gets: 0o666 less the process's umask (0o644 by default)."""
    try:  # Linux: read without changing it (os.umask can only be read by setting it)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file in the same folder, fsync, rename), with the
    mode the umask gives new files (a temporary file alone would be 0600: unreadable to others)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
