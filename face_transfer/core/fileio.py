"""Small file helpers every stage shares: atomic writes (JSON, text, bytes, npz), first-writer-wins claims,
JSON reads that name the file, numpy-aware encoding.

Every write goes through one unique temporary name per writer (pid + random), then `os.replace`: a killed
process never leaves a half-written file under its final name, and two writers (processes or threads) of the
same file never share, and so never steal, one temporary file.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets

import numpy as np


def json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def temp_name(path: str, suffix: str = "") -> str:
    """A temporary name next to `path`, unique to this writer: `<path>.tmp-<pid>-<random><suffix>`.

    `suffix` keeps an extension a writer insists on (np.savez appends `.npz`, Keras wants `.keras`).
    Temporary files contain `.tmp` in their name, which the integrity checks skip."""
    return f"{path}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = ""):
    """Yield a unique temporary path; when the block ends without error it replaces `path` atomically, when it
    raises, the temporary file is removed. Parents of `path` are created."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = temp_name(path, suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _dump_json(obj, indent: int = 1) -> str:
    return json.dumps(obj, indent=indent, default=json_default)


def write_json(path: str, obj, indent: int = 1) -> str:
    """Write `obj` as JSON atomically (parents created); returns the path."""
    return write_text(path, _dump_json(obj, indent))


def write_text(path: str, text: str, encoding: str = "utf-8", errors: str = "strict") -> str:
    """Write `text` atomically (parents created); returns the path."""
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding=encoding, errors=errors) as f:
            f.write(text)
    return path


def write_bytes(path: str, data: bytes) -> str:
    """Write `data` atomically (parents created); returns the path."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def save_npz(path: str, **arrays) -> str:
    """np.savez(path, **arrays) atomically; `path` should end in `.npz`. Returns the path."""
    with atomic_output(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return path


def claim_json(path: str, obj, indent: int = 1, wait_s: float = 10.0) -> dict | None:
    """Create `path` holding `obj` only if it does not exist yet: first writer wins.

    Returns None when this call created the file, otherwise the winner's content (the caller compares it
    with its own and names both when they differ). The file appears complete or not at all: it is written
    under a unique temporary name and then hard-linked to `path`, an exclusive create (like O_EXCL) that
    fails when `path` exists. Where the file system has no hard links, an `O_CREAT | O_EXCL` open is used,
    and a loser that reads the file while the winner is still writing it retries for up to `wait_s`.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    text = _dump_json(obj, indent)
    tmp = temp_name(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.link(tmp, path)
        return None
    except FileExistsError:
        return _read_claimed(path, wait_s)
    except OSError:  # no hard links here (some network and FUSE file systems): fall back to O_EXCL below
        pass
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return _read_claimed(path, wait_s)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return None


def _read_claimed(path: str, wait_s: float) -> dict:
    import time
    t0 = time.time()
    while True:
        try:
            return read_json(path)
        except (ValueError, FileNotFoundError):
            if time.time() - t0 > wait_s:
                raise
            time.sleep(0.05)


def read_json(path: str):
    """The parsed file; a ValueError naming the file if it is not valid JSON (e.g. truncated)."""
    with open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
                         "the file is truncated or was edited by hand") from None


def dict_differences(have: dict, want: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """[(dotted key, value in `have`, value in `want`)] for every key of `want` whose value differs (nested)."""
    out = []
    for key in want:
        a, b = have.get(key), want[key]
        if isinstance(a, dict) and isinstance(b, dict):
            out += dict_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((f"{prefix}{key}", a, b))
    return out
