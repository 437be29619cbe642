"""The settings of the user's face folders without the readers (FacesConfig). Imports no TensorFlow, so
configs.py can read it anywhere.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class FacesConfig:
    sources: tuple[str, ...] = ()   # folders (searched recursively), globs, or TFRecord files / globs (*.tfrecord, *.tfrecord.gz, *.tfrec)
    align: bool = False             # detect + align each photo with MTCNN (face_transfer.data.align); else centre square crop + resize (for photos that already are face crops)
    real_fraction: float = 1.0      # share of the user's faces in the mix (the rest SynthFaces); 0 < f <= 1
    image_size: int = 64
    shard_size: int = 1000
    max_images: int | None = None   # use at most this many input items (sorted order; a TFRecord record is one item)
    image_key: str = "image"        # bytes feature holding the encoded image in input TFRecords

    def __post_init__(self):
        sources = (self.sources,) if isinstance(self.sources, (str, os.PathLike)) else tuple(self.sources)
        # A frozen dataclass: normalise a list / PathLike given by the caller into the declared tuple of str.
        object.__setattr__(self, "sources", tuple(os.fspath(s) for s in sources))
        if not all(isinstance(s, str) and s for s in self.sources):
            raise ValueError(f"FacesConfig.sources must be non-empty path strings, got {self.sources!r}")
        if not isinstance(self.real_fraction, (int, float)) or not 0.0 < float(self.real_fraction) <= 1.0:
            raise ValueError(f"FacesConfig.real_fraction must be in (0, 1], got {self.real_fraction!r}")
        if not isinstance(self.image_size, (int, np.integer)) or not 8 <= self.image_size <= 1024:
            raise ValueError(f"FacesConfig.image_size must be an int in [8, 1024], got {self.image_size!r}")
        if not isinstance(self.shard_size, (int, np.integer)) or self.shard_size < 1:
            raise ValueError(f"FacesConfig.shard_size must be a positive int, got {self.shard_size!r}")
        if self.max_images is not None and (not isinstance(self.max_images, (int, np.integer)) or self.max_images < 1):
            raise ValueError(f"FacesConfig.max_images must be None or a positive int, got {self.max_images!r}")
        if not isinstance(self.image_key, str) or not self.image_key:
            raise ValueError(f"FacesConfig.image_key must be a non-empty string, got {self.image_key!r}")
        if not isinstance(self.align, bool):
            raise ValueError(f"FacesConfig.align must be a bool, got {self.align!r}")
