"""Teacher references: a user's model file (Keras, SavedModel, ONNX, TFLite) as a `TeacherRef` in the run config.
Owns the `--teacher` flag and JSON syntax, pinning the file to a run by its digest, and loading a ref as a `Teacher`.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re

import numpy as np

from face_transfer.core.digest import file_digest
from face_transfer.core.errors import TeacherLoadError
from face_transfer.teachers.adapters import Teacher
from face_transfer.teachers.config import NAME_RE, TASK_RE, TeacherRef
from face_transfer.teachers.formats import accepted, detect_format, format_names, get_format

_FLAG_SYNTAX = "NAME=PATH[,key=value...]"


# ----------------------------------------------------------------------------- parsing


def _expect(where, key, expected, value):
    return ValueError(f"{where}: key {key!r} must be {expected}, got {value!r}")


def _to_float(where, key, value):
    if isinstance(value, bool):
        raise _expect(where, key, "a number", value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _expect(where, key, "a number", value) from None


def _per_channel(where, key, value):
    parts = value.split("/") if isinstance(value, str) else value
    if isinstance(parts, (list, tuple)):
        if len(parts) not in (1, 3):
            raise _expect(where, key, "one number or 3 per-channel numbers (a/b/c)", value)
        floats = tuple(_to_float(where, key, p) for p in parts)
        return floats[0] if len(floats) == 1 else floats
    return _to_float(where, key, parts)


def _to_int(where, key, value, expected):
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise _expect(where, key, expected, value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _expect(where, key, expected, value) from None


def _to_bool(where, key, value):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise _expect(where, key, "a boolean (1/0, true/false, yes/no)", value)


def _choice(where, key, value, choices):
    if not isinstance(value, str) or value.lower() not in choices:
        raise _expect(where, key, " or ".join(repr(c) for c in choices), value)
    return value.lower()


def _text(where, key, value):
    if not isinstance(value, str) or not value:
        raise _expect(where, key, "a non-empty string", value)
    return value


def _tasks(where, key, value):
    parts = value.split("+") if isinstance(value, str) else value
    if not isinstance(parts, (list, tuple)) or not all(isinstance(p, str) and TASK_RE.match(p) for p in parts):
        raise _expect(where, key, "task names joined with '+' (e.g. expression+age)", value)
    return tuple(parts)


def _pool(where, key, value):
    if value is None:
        return None
    return {"avg": "avg", "max": "max", "none": None}[_choice(where, key, value, ("avg", "max", "none"))]


# option key -> (dataclass field, converter); "tasks" and "color" are the short spellings.
_OPTIONS = {
    "format": ("format", lambda w, k, v: _choice(w, k, v, format_names())),
    "output": ("output", _text),
    "size": ("size", lambda w, k, v: _check_positive(w, k, _to_int(w, k, v, "a positive integer"))),
    "channels": ("channels", lambda w, k, v: _check_channels(w, k, _to_int(w, k, v, "1 or 3"))),
    "color": ("color_order", lambda w, k, v: _choice(w, k, v, ("rgb", "bgr"))),
    "color_order": ("color_order", lambda w, k, v: _choice(w, k, v, ("rgb", "bgr"))),
    "scale": ("scale", _per_channel),
    "offset": ("offset", _per_channel),
    "layout": ("layout", lambda w, k, v: _choice(w, k, v, ("nhwc", "nchw"))),
    "pool": ("pool", _pool),
    "endpoint": ("endpoint", _text),
    "tasks": ("source_tasks", _tasks),
    "source_tasks": ("source_tasks", _tasks),
    "trusted": ("trusted", _to_bool),
}


def _sha256(where, key, value):
    if not isinstance(value, str) or not re.fullmatch(r"[0-9a-f]{64}|", value):
        raise _expect(where, key, "a sha256 hex digest (64 lowercase hex digits) or ''", value)
    return value


# JSON also holds what a run config writes back: the pinned digest, and format "" (not detected yet).
_JSON_ONLY = {
    "format": ("format", lambda w, k, v: "" if v == "" else _choice(w, k, v, format_names())),
    "sha256": ("sha256", _sha256),
    "bytes": ("bytes", lambda w, k, v: _check_positive(w, k, _to_int(w, k, v, "a byte count"), allow_zero=True)),
}


def _check_positive(where, key, n, allow_zero=False):
    if n < (0 if allow_zero else 1):
        raise _expect(where, key, "a non-negative integer" if allow_zero else "a positive integer", n)
    return n


def _check_channels(where, key, n):
    if n not in (1, 3):
        raise _expect(where, key, "1 or 3", n)
    return n


def _build(where, name, path, options: dict, allowed: dict) -> TeacherRef:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(f"{where}: teacher name {name!r} must start with a letter and hold only letters, digits, '_' or '-'")
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: the path of teacher {name!r} is empty; expected {accepted()}")
    fields = {}
    for key, value in options.items():
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(allowed))}")
        field, convert = allowed[key]
        if field in fields:
            raise ValueError(f"{where}: key {key!r} given twice (as {field})")
        fields[field] = convert(where, key, value)
    channels = fields.get("channels", 3)
    for field in ("scale", "offset"):
        value = fields.get(field)
        if isinstance(value, tuple) and len(value) != channels:
            raise ValueError(
                f"{where}: key {field!r} has {len(value)} values but channels={channels}; "
                f"expected one value or one per channel"
            )
    try:
        return TeacherRef(name=name, path=path, **fields)
    except ValueError as e:  # cross-field checks of the dataclass/InputSpec
        raise ValueError(f"{where}: {e}") from e


def parse_teacher_flag(text: str) -> TeacherRef:
    """`NAME=PATH[,key=value...]` -> TeacherRef (PATH made absolute against the working directory).

    Keys: format, output, size, channels, color (rgb|bgr), scale and offset (one number or a/b/c per
    channel), layout (nhwc|nchw), pool (avg|max|none), endpoint, tasks (a+b), trusted (1|0).
    Paths holding commas need the JSON form (teacher_refs_from_json).
    """
    where = f"teacher flag {text!r}"
    if not isinstance(text, str) or "=" not in text.split(",", 1)[0]:
        raise ValueError(f"{where}: expected {_FLAG_SYNTAX}, e.g. expr=/models/expr.onnx,output=feat,tasks=expression")
    head, *rest = text.split(",")
    name, path = (s.strip() for s in head.split("=", 1))
    options = {}
    for part in rest:
        if "=" not in part:
            raise ValueError(f"{where}: option {part.strip()!r} is not key=value; expected {_FLAG_SYNTAX}")
        key, value = (s.strip() for s in part.split("=", 1))
        if key in options:
            raise ValueError(f"{where}: key {key!r} given twice")
        options[key] = value
    if path:
        path = os.path.abspath(os.path.expanduser(path))
    return _build(where, name, path, options, _OPTIONS)


def teacher_ref_from_dict(data: dict, where: str = "teacher ref", base_dir: str | None = None) -> TeacherRef:
    """A JSON object (the dataclass fields, `tasks` for `source_tasks`, `color` for `color_order`)
    -> TeacherRef; a relative path is taken relative to `base_dir` (default: the working directory)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected an object with at least 'name' and 'path', got {type(data).__name__}")
    missing = [k for k in ("name", "path") if k not in data]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; expected at least 'name' and 'path'")
    options = {k: v for k, v in data.items() if k not in ("name", "path")}
    if options.get("output", "") is None:
        del options["output"]
    path = data["path"]
    if isinstance(path, str) and path:
        path = os.path.abspath(os.path.join(base_dir or os.getcwd(), os.path.expanduser(path)))
    return _build(where, data["name"], path, options, {**_OPTIONS, **_JSON_ONLY})


def teacher_refs_from_json(path) -> tuple[TeacherRef, ...]:
    """A JSON file holding a list of teacher objects; relative paths are relative to the file."""
    path = os.fspath(path)
    expected = "a JSON list of teacher objects ({\"name\": ..., \"path\": ..., ...})"
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file; expected {expected}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); expected {expected}") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: the top level is a {type(data).__name__}; expected {expected}")
    base = os.path.dirname(os.path.abspath(path))
    refs = tuple(teacher_ref_from_dict(entry, f"{path}: entry {i}", base) for i, entry in enumerate(data))
    seen = {}
    for i, ref in enumerate(refs):
        if ref.name in seen:
            raise ValueError(f"{path}: entry {i}: teacher name {ref.name!r} already used by entry {seen[ref.name]}")
        seen[ref.name] = i
    return refs


# ----------------------------------------------------------------------------- files


def resolve_ref(ref: TeacherRef) -> TeacherRef:
    """The ref with an absolute path, its format detected and its digest filled.

    A ref that already holds a digest (from a run config) is checked against the file instead:
    resolving never re-pins a changed file.
    """
    path = os.path.abspath(os.path.expanduser(ref.path))
    if not os.path.exists(path):
        raise TeacherLoadError(f"{path}: no such file or directory; expected teacher {ref.name!r} as {accepted()}")
    fmt = ref.format or detect_format(path)
    ref = dataclasses.replace(ref, path=path, format=fmt)
    if ref.sha256:
        check_unchanged(ref)
        return ref
    sha, n = file_digest(path)
    return dataclasses.replace(ref, sha256=sha, bytes=n)


def check_unchanged(ref: TeacherRef) -> None:
    """TeacherLoadError when the file no longer has the digest the ref was resolved with."""
    if not ref.sha256:
        raise ValueError(f"teacher {ref.name!r}: the ref has no sha256; resolve_ref it first")
    if not os.path.exists(ref.path):
        raise TeacherLoadError(
            f"{ref.path}: teacher {ref.name!r} is gone since the run started; restore the file or start a new --run_dir"
        )
    sha, n = file_digest(ref.path)
    if sha != ref.sha256:
        raise TeacherLoadError(
            f"{ref.path}: teacher {ref.name!r} changed since the run started "
            f"(sha256 {ref.sha256[:12]}.. -> {sha[:12]}.., {ref.bytes} -> {n} bytes); "
            "restore the file or start a new --run_dir"
        )


# ----------------------------------------------------------------------------- loading


def check_images(size: int) -> np.ndarray:
    """Two synthetic uint8 images [2, size, size, 3]: a horizontal and a vertical gray ramp."""
    ramp = np.linspace(0, 255, size).round().astype(np.uint8)
    horizontal = np.broadcast_to(ramp[None, :, None], (size, size, 3))
    vertical = np.broadcast_to(ramp[:, None, None], (size, size, 3))
    return np.stack([horizontal, vertical])


def load_teacher_ref(ref: TeacherRef, verify: bool = True) -> Teacher:
    """The ref's file as a frozen `Teacher` named `ref.name`, with metadata["source_tasks"].

    Checks the digest first when the ref holds one; `verify` runs 2 synthetic images through it
    and wants finite [2, D] features.
    """
    if ref.sha256:
        check_unchanged(ref)
    path = os.path.abspath(os.path.expanduser(ref.path))
    fmt = ref.format or detect_format(path)
    teacher = get_format(fmt).load(path, ref)
    teacher.metadata.update({"source_tasks": tuple(ref.source_tasks), "format": fmt, "sha256": ref.sha256,
                             "bytes": ref.bytes})
    if verify:
        _check_forward(teacher, ref, path)
    return teacher


def _check_forward(teacher, ref, path):
    images = check_images(ref.size)
    want = f"[2, {teacher.dim}]"
    try:
        out = teacher.embed(images)
    except FloatingPointError:  # Teacher.embed refuses non-finite output: report it as the check does below
        raise TeacherLoadError(
            f"{path}: teacher {ref.name!r} gave NaN/Inf features (shape {want}) on 2 synthetic images; "
            f"expected finite {want} features (check the input spec's scale/offset and the output name)") from None
    except Exception as e:
        raise TeacherLoadError(
            f"{path}: teacher {ref.name!r} failed its check forward pass on 2 synthetic images "
            f"{list(images.shape)}; expected features of shape {want} ({type(e).__name__}: {e})"
        ) from e
    if out.shape != (2, teacher.dim) or teacher.dim < 1:
        raise TeacherLoadError(
            f"{path}: teacher {ref.name!r} gave features of shape {list(out.shape)} on 2 synthetic images; expected {want}"
        )
    if not np.all(np.isfinite(out)):
        raise TeacherLoadError(
            f"{path}: teacher {ref.name!r} gave NaN/Inf features (shape {list(out.shape)}) on 2 synthetic images; "
            f"expected finite {want}"
        )
