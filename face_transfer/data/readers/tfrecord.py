"""TFRecords of tf.train.Example (encoded image bytes + label features): writer, reader and the task-set
format "tfrecord". TensorFlow is imported when a record is read or written, not with this module.
"""
from __future__ import annotations

import glob
import io
import os
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from face_transfer.data.imageio import (DEFAULT_IMAGE_SIZE, DataError, ItemErrors, ReadReport, check_image_size,
                                        decode_image_bytes, error_kind, stack_images)
from face_transfer.data.readers import RawSet, call_reader, canonical_crop, is_capped, on_error_of, register_reader

# Feature-name suffix under which write_tfrecord stores the per-example shape of a label
# with more than one dimension (e.g. landmarks [5, 2]); tf.train.Example lists are flat.
_SHAPE_SUFFIX = "/shape"


def write_tfrecord(
    path: str | os.PathLike,
    images: np.ndarray,
    labels: Mapping[str, np.ndarray] | None = None,
    image_key: str = "image",
    image_format: str = "png",
) -> int:
    """Writes images (uint8 [N, H, W, 3]) and labels as tf.train.Example records; returns N.

    Images are stored encoded (PNG is lossless, so a round trip is exact; JPEG is smaller).
    Integer labels become int64 lists, floats float lists, strings bytes lists; a label with
    more than one dimension per example is stored flat plus a ``<key>/shape`` feature that
    :func:`read_tfrecord` uses to restore it.
    """
    import tensorflow as tf

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}")
    if image_format not in ("png", "jpeg"):
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    labels = {k: np.asarray(v) for k, v in (labels or {}).items()}
    for key, value in labels.items():
        if key == image_key or key.endswith(_SHAPE_SUFFIX):
            raise ValueError(f"label name {key!r} clashes with the image key or the {_SHAPE_SUFFIX!r} suffix")
        if len(value) != len(images):
            raise ValueError(f"label {key!r} has {len(value)} rows, images have {len(images)}")
    path = os.fspath(path)
    with tf.io.TFRecordWriter(path) as writer:
        for i, image in enumerate(images):
            buf = io.BytesIO()
            pil = Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image)
            pil.save(buf, format="PNG" if image_format == "png" else "JPEG", quality=95)
            feature = {image_key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()]))}
            for key, value in labels.items():
                item = np.asarray(value[i])
                feature[key] = _to_feature(tf, item, key)
                if item.ndim > 1:
                    feature[key + _SHAPE_SUFFIX] = tf.train.Feature(
                        int64_list=tf.train.Int64List(value=list(item.shape))
                    )
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writer.write(example.SerializeToString())
    return len(images)


def _to_feature(tf, item: np.ndarray, key: str):
    flat = item.reshape(-1)
    if item.dtype.kind in "iub":
        return tf.train.Feature(int64_list=tf.train.Int64List(value=flat.astype(np.int64).tolist()))
    if item.dtype.kind == "f":
        return tf.train.Feature(float_list=tf.train.FloatList(value=flat.astype(np.float32).tolist()))
    if item.dtype.kind in "US":
        data = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in flat.tolist()]
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=data))
    raise ValueError(f"label {key!r} has dtype {item.dtype}; expected int, float or str")


_KIND_DTYPES = {"int64_list": np.int64, "float_list": np.float32, "bytes_list": str}


def read_tfrecord(
    paths: str | os.PathLike | Iterable[str | os.PathLike],
    image_key: str = "image",
    label_keys: Sequence[str] | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    on_error: str = "raise",
    align: bool = False,
    compression_type: str | None = None,
    limit: int | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], ReadReport]:
    """Reads tf.train.Example records holding encoded image bytes under ``image_key`` plus labels.

    ``label_keys=None`` takes every other feature. A label's type comes from its feature
    kind (int64_list -> int64, float_list -> float32, bytes_list -> str); one value per
    record gives ``[N]``, k values ``[N, k]``, and a ``<key>/shape`` feature restores more
    dimensions. A record missing a key, or whose feature changes kind or length from the
    first kept record, is a bad item. ``compression_type`` is "" / "GZIP" / "ZLIB"
    (default: GZIP for ``*.gz`` files).
    """
    import tensorflow as tf

    check_image_size(image_size)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise DataError("read_tfrecord: no TFRecord paths were given")
    report = ReadReport(source=paths[0] if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)")
    errors = ItemErrors(report, on_error)
    images: list[np.ndarray] = []
    values: dict[str, list] = {}
    signature: dict[str, tuple[str, int, tuple | None]] | None = None
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such TFRecord file")
        compression = compression_type if compression_type is not None else ("GZIP" if path.endswith(".gz") else "")
        records = iter(tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator())
        index = -1
        while limit is None or len(images) < limit:
            index += 1
            where = f"{path} record {index}"
            try:
                raw = next(records)
            except StopIteration:
                break
            except tf.errors.OpError as e:
                # A corrupt record (bad CRC, truncated) makes the rest of the file unreadable.
                errors.bad(where, "corrupt_file", f"unreadable TFRecord data from here on ({e.message.splitlines()[0]})")
                break
            try:
                example = tf.train.Example.FromString(raw)
            except Exception as e:  # protobuf raises its own DecodeError type
                errors.bad(where, "malformed_record", f"not a tf.train.Example ({e})")
                continue
            features = example.features.feature
            if image_key not in features or features[image_key].WhichOneof("kind") != "bytes_list" \
                    or len(features[image_key].bytes_list.value) != 1:
                errors.bad(where, "missing_value", f"expected one encoded image in bytes feature {image_key!r}; features: {sorted(features)}")
                continue
            if label_keys is not None:
                keys = list(label_keys)
            elif signature is not None:
                # Later records must carry the first kept record's keys, or rows would misalign.
                keys = list(signature)
            else:
                keys = sorted(k for k in features if k != image_key and not k.endswith(_SHAPE_SUFFIX))
            parsed, problem = {}, None
            for key in keys:
                if key not in features:
                    problem = ("missing_value", f"feature {key!r} is missing")
                    break
                kind = features[key].WhichOneof("kind")
                raw_values = list(getattr(features[key], kind).value) if kind else []
                shape = tuple(features[key + _SHAPE_SUFFIX].int64_list.value) if key + _SHAPE_SUFFIX in features else None
                sig = (kind, len(raw_values), shape)
                expected = signature.get(key) if signature is not None else None
                if kind is None or not raw_values:
                    problem = ("missing_value", f"feature {key!r} is empty")
                    break
                if expected is not None and sig != expected:
                    problem = ("bad_label", f"feature {key!r} is {kind} with {len(raw_values)} value(s), "
                               f"expected {expected[0]} with {expected[1]} as in the first record")
                    break
                if shape is not None and int(np.prod(shape)) != len(raw_values):
                    problem = ("bad_label", f"feature {key!r} has {len(raw_values)} values, its shape says {shape}")
                    break
                if kind == "bytes_list":
                    try:
                        raw_values = [v.decode("utf-8") for v in raw_values]
                    except UnicodeDecodeError:
                        problem = ("bad_label", f"feature {key!r} is not UTF-8 text")
                        break
                parsed[key] = (sig, raw_values)
            if problem:
                errors.bad(where, *problem)
                continue
            try:
                image = canonical_crop(
                    decode_image_bytes(features[image_key].bytes_list.value[0], where=where),
                    image_size, align, where=where,
                )
            except DataError as e:
                errors.bad(where, error_kind(e), str(e))
                continue
            if signature is None:
                signature = {key: sig for key, (sig, _) in parsed.items()}
                values = {key: [] for key in parsed}
            images.append(image)
            for key, (_, vals) in parsed.items():
                values[key].append(vals)
            report.kept_sources.append(where)
    errors.finish()
    labels = {}
    for key, rows in values.items():
        kind, length, shape = signature[key]
        arr = np.asarray(rows, dtype=_KIND_DTYPES[kind])
        if shape is not None:
            arr = arr.reshape((len(rows),) + shape)
        elif length == 1:
            arr = arr.reshape(len(rows))
        labels[key] = arr
    return stack_images(images, image_size), labels, report


@register_reader("tfrecord", image_column=True,
                 selection="the first max_images records: TFRecords are read in order (no random access) and are "
                           "usually written shuffled")
def read(cfg, size: int, drop: bool, spec: dict) -> RawSet:
    if any(ch in cfg.path for ch in "*?["):
        paths = sorted(glob.glob(cfg.path))
        if not paths:
            raise DataError(f"{cfg.path}: no TFRecord files match this pattern")
    else:
        paths = [cfg.path]
    images, labels, report = call_reader(read_tfrecord, paths, image_key=spec.get("image_column", "image"),
                                         image_size=size, on_error=on_error_of(drop), align=cfg.align,
                                          limit=cfg.max_images)
    return RawSet(images, dict(labels), list(report.kept_sources), report, capped=is_capped(cfg, report))
