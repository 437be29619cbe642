"""Small file helpers every stage shares: atomic JSON writes, JSON reads that name the file, numpy-aware encoding.
A killed process never leaves a half-written JSON under its final name (tmp file + os.replace).
"""
from __future__ import annotations

import json
import os

import numpy as np


def json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def write_json(path: str, obj, indent: int = 1) -> str:
    """Write `obj` as JSON atomically (parents created); returns the path."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"  # per process: two writers never share (and steal) one temp file
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, default=json_default)
    os.replace(tmp, path)
    return path


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
