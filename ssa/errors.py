"""The one exception type for bad input, so callers can tell it from bugs."""

from __future__ import annotations

import re
import stat
from pathlib import Path

# "<_io.BytesIO object at 0x7f...>" and the like: a Python object's repr names nothing a user has
_OBJECT_REPR = re.compile(r"\s*<[^<>]*? (?:object )?at 0x[0-9a-fA-F]+>")


def plain(text: str) -> str:
    """`text` without Python object reprs (a failure reason names the file and the problem only)."""
    return _OBJECT_REPR.sub("", text)


class InputError(ValueError):
    """Invalid input data: names the file (when known) and what is wrong with it."""

    def __init__(self, problem: str, source: str | Path | None = None):
        self.problem = plain(problem)
        self.source = str(source) if source is not None else None
        super().__init__(f"{self.source}: {self.problem}" if self.source else self.problem)

    def with_source(self, source: str | Path) -> InputError:
        """The same error, attributed to `source` (if it names none yet)."""
        return self if self.source else InputError(self.problem, source)


def read_input(path, what: str, max_bytes: int | None = None) -> bytes:
    """The bytes of an input file (a path, or anything with `read_bytes()` and `size` such as a
    member of a tar shard); InputError naming it (and `what` it is) when it cannot be read, or when
    it is over `max_bytes` (checked before anything is read)."""
    try:
        if not hasattr(path, "size"):  # a path: only a regular file (a FIFO or device named x.jpg would block)
            info = Path(path).stat()
            if not stat.S_ISREG(info.st_mode):
                kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
                raise InputError(f"cannot read {what} ({kind})", path)
        if max_bytes is not None:
            size = path.size if hasattr(path, "size") else info.st_size
            if size > max_bytes:
                raise InputError(f"too large: {what} of {size / (1 << 20):,.0f} MiB is over the "
                                 f"{max_bytes / (1 << 20):,.0f} MiB this client takes", path)
        return path.read_bytes() if hasattr(path, "read_bytes") else Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {what} ({exc.strerror or exc})", path) from exc
