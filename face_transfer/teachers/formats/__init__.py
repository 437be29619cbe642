"""Teacher file formats: one module per format in this package registers a `TeacherFormat` with `@register_format`.
Owns detecting a file's format (extension, then content), the list of accepted formats error messages give, and
loading a file through its format. Imports no TensorFlow itself; the format modules do.
"""
from __future__ import annotations

import os

from face_transfer.core.errors import TeacherLoadError
from face_transfer.core.registry import Registry

TEACHER_FORMATS = Registry("teacher format", package="face_transfer.teachers.formats")


class TeacherFormat:
    """How one kind of teacher file is recognised and loaded. A subclass sets the class attributes and `load`;
    `@register_format(name)` registers one instance under `name` (which is also `TeacherRef.format`)."""

    name = ""  # set by register_format
    order = 100  # place in the lists error messages give (the built-ins come first, in their historical order)
    extensions: tuple[str, ...] = ()  # lower-case, with the dot; claims a file by its name
    accepts = ""  # the phrase error messages list, e.g. "an .onnx file"
    directory_marker = ""  # for a format that is a directory: the file inside that makes it one

    def sniff(self, path: str, head: bytes) -> bool:
        """Whether the file (or, for a directory format, the directory) is this format by its content;
        `head` is the first 8 bytes of a file (b"" for a directory)."""
        return False

    def load(self, path: str, ref):
        """The file as a `Teacher` named `ref.name`, read as the `TeacherRef` says (input spec, output, pool...)."""
        raise NotImplementedError


def register_format(name: str):
    """Class decorator: registers one instance of a `TeacherFormat` subclass under `name`."""
    return TEACHER_FORMATS.register_instance(name)


def formats() -> list[TeacherFormat]:
    """Every registered format, in `order`."""
    return TEACHER_FORMATS.ordered()


def format_names() -> tuple[str, ...]:
    return tuple(f.name for f in formats())


def get_format(name: str) -> TeacherFormat:
    """The format registered as `name`; UnknownNameError (a KeyError) listing the names otherwise."""
    return TEACHER_FORMATS.get(name)


def accepted() -> str:
    """"a .keras/.h5/.hdf5 file, a SavedModel directory (...), ... or a .tflite file": what a teacher path may be."""
    phrases = [f.accepts for f in formats() if f.accepts]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " or " + phrases[-1]


def detect_format(path) -> str:
    """The name of the format a file or directory is in: by its extension, else by its content."""
    path = os.fspath(path)
    if os.path.isdir(path):
        dirs = [f for f in formats() if f.directory_marker]
        for fmt in dirs:
            if fmt.sniff(path, b""):
                return fmt.name
        markers = " or ".join(f.directory_marker for f in dirs) or "a known layout"
        raise TeacherLoadError(f"{path}: a directory without {markers}; expected {accepted()}")
    if not os.path.isfile(path):
        raise TeacherLoadError(f"{path}: no such file or directory; expected {accepted()}")
    ext = os.path.splitext(path)[1].lower()
    for fmt in formats():
        if ext in fmt.extensions:
            return fmt.name
    with open(path, "rb") as f:
        head = f.read(8)
    for fmt in formats():
        if not fmt.directory_marker and fmt.sniff(path, head):
            return fmt.name
    raise TeacherLoadError(f"{path}: unknown model format (extension {ext or 'none'!r}, unrecognised content); "
                           f"expected {accepted()}")


__all__ = ["TEACHER_FORMATS", "TeacherFormat", "accepted", "detect_format", "format_names", "formats", "get_format",
           "register_format"]
