"""The content digest that pins a file or a directory (a SavedModel) to a run: SHA-256 over the bytes, and for
a directory over every file's relative path, size and content, in path order.
"""
from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 20  # read size: large enough that hashing, not the syscalls, sets the speed


def file_digest(path) -> tuple[str, int]:
    """(sha256 hex, bytes) of a file, or of a directory: every file in relative-path order, each
    hashed as its relative path then its content (so renames and moves change the digest)."""
    path = os.fspath(path)
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)

    def feed(file_path):
        n = 0
        with open(file_path, "rb", buffering=0) as f:
            while True:
                got = f.readinto(buf)
                if not got:
                    return n
                h.update(view[:got])
                n += got

    if not os.path.isdir(path):
        n = feed(path)
        return h.hexdigest(), n
    files = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        files.extend(os.path.relpath(os.path.join(root, n), path).replace(os.sep, "/") for n in names)
    total = 0
    for rel in sorted(files):
        encoded = rel.encode("utf-8")
        # Length-prefixed, so a path can never run into the previous file's bytes.
        h.update(len(encoded).to_bytes(8, "little") + encoded)
        size = os.path.getsize(os.path.join(path, rel))
        h.update(size.to_bytes(8, "little"))
        total += feed(os.path.join(path, rel))
    return h.hexdigest(), total


__all__ = ["file_digest"]
