"""One error type for everything a user can get wrong about a checkpoint.

Every message names the file (or directory) and, where there is one, the key, and says how to fix
it; the CLI prints it and exits non-zero without leaving a partial destination behind.
"""

from __future__ import annotations

from typing import Optional


class CheckpointError(Exception):
    """A checkpoint that cannot be read, written or converted as asked."""

    def __init__(self, message: str, path: Optional[object] = None, key: Optional[str] = None,
                 hint: Optional[str] = None):
        self.path, self.key, self.hint = path, key, hint
        where = []
        if path is not None:
            where.append(str(path))
        if key is not None:
            where.append(f"key {key!r}")
        text = (": ".join(where) + ": " if where else "") + message
        if hint:
            text += f" ({hint})"
        super().__init__(text)
