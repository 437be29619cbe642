"""Errors raised by several layers alike (data, teachers, deploy, the stages), so that each can raise them and
a caller can catch them without importing the layer that happened to find the problem.
"""
from __future__ import annotations


class CorruptArtifactError(ValueError):
    """A file a finished stage wrote is damaged and cannot be rebuilt here; the message names it."""


class TeacherLoadError(ValueError):
    """An existing model could not be loaded as a teacher; the message names the file and what was expected."""


__all__ = ["CorruptArtifactError", "TeacherLoadError"]
