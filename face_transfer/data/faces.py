"""A user's unlabelled face photos (folders, globs or TFRecords) as a prepared, sharded, streamable face set.
Owns the resumable prepare pre-pass (decode + canonical crop -> PNG TFRecord shards + manifest), FaceSet and the seeded face stream."""
from __future__ import annotations

import collections
import concurrent.futures
import bisect
import dataclasses
import glob
import gzip
import hashlib
import io
import json
import os
import struct
import sys
import time
import warnings
from typing import Callable, Iterable, Iterator

import numpy as np
import tensorflow as tf
from PIL import Image

from face_transfer.core.fileio import atomic_output, claim_json, dict_differences, write_json
from face_transfer.core.runpaths import MANIFEST_JSON as MANIFEST
from face_transfer.data import align as align_lib
from face_transfer.data.config import FacesConfig
from face_transfer.data.imageio import (IMAGE_SUFFIXES, DataError, NoFaceError, center_square_resize,
                                        decode_image_bytes, load_image)

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecord.gz", ".tfrec")
SPEC = "spec.json"
SKIPPED = "skipped.txt"
# The manifest lists at most this many skipped items (the counts stay exact; skipped.txt has them all),
# so a folder with 50k broken files does not make a 10 MB manifest that every FaceSet.open parses.
MAX_LISTED_SKIPS = 1000
_EXPECTED = ("image files (" + " ".join(IMAGE_SUFFIXES) + ", folders searched recursively) or TFRecord files ("
             + " ".join("*" + s for s in TFRECORD_SUFFIXES) + ")")


# --------------------------------------------------------------------------- enumeration


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_SUFFIXES)


def _is_tfrecord(path: str) -> bool:
    return path.lower().endswith(TFRECORD_SUFFIXES)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(folder: str) -> list[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        # Hidden folders (.git, .thumbnails, macOS ._ forks) hold no photos of the user's.
        dirs[:] = [d for d in dirs if not _hidden(d)]
        found += [os.path.join(root, f) for f in files
                  if not _hidden(f) and (_is_image(f) or _is_tfrecord(f))]
    return found


def _expand(source: str) -> list[str]:
    """The image / TFRecord files a source names (absolute paths, unsorted)."""
    if glob.has_magic(source):
        matches = glob.glob(os.path.expanduser(source), recursive=True)
        files = []
        for m in matches:
            if os.path.isdir(m):
                files += _walk(m)
            elif not _hidden(os.path.basename(m)) and (_is_image(m) or _is_tfrecord(m)):
                files.append(m)
        return [os.path.abspath(f) for f in files]
    path = os.path.expanduser(source)
    if not os.path.exists(path):
        raise DataError(f"{source}: no such file or folder (expected a folder of face photos, a glob, or a TFRecord file)")
    if os.path.isdir(path):
        return [os.path.abspath(f) for f in _walk(path)]
    if not (_is_image(path) or _is_tfrecord(path)):
        raise DataError(f"{source}: not an image or TFRecord file (expected {_EXPECTED})")
    return [os.path.abspath(path)]


def _count_records(path: str) -> int:
    """Records in a TFRecord file; a damaged tail counts as one more item (reported corrupt when read)."""
    if not path.lower().endswith(".gz"):
        # Walk the length headers (8-byte length, 4-byte CRC, data, 4-byte CRC) with seeks: a 4 GB
        # file is counted without reading its data, which matters because this runs on every resume.
        size = os.path.getsize(path)
        n, pos = 0, 0
        with open(path, "rb") as f:
            while pos + 12 <= size:
                f.seek(pos)
                (length,) = struct.unpack("<Q", f.read(8))
                end = pos + 12 + length + 4
                if end > size:
                    break
                n, pos = n + 1, end
        return n + (1 if pos < size else 0)
    n = 0
    with gzip.open(path, "rb") as f:
        try:
            while True:
                header = f.read(12)
                if not header:
                    break
                if len(header) < 12:
                    return n + 1
                (length,) = struct.unpack("<Q", header[:8])
                if length > 1 << 31:  # a damaged length field: do not try to read exabytes
                    return n + 1
                body = f.read(length + 4)
                if len(body) < length + 4:
                    return n + 1
                n += 1
        except (OSError, EOFError, gzip.BadGzipFile):
            return n + 1
    return n


@dataclasses.dataclass(frozen=True, slots=True)  # slots: 200k of these stay ~20 MB
class _Segment:
    """Consecutive input items of one file: an image file is one item, a TFRecord file `count` records."""

    path: str
    count: int
    tfrecord: bool


def _segments(cfg: FacesConfig, exclude: str | None = None) -> list[_Segment]:
    if not cfg.sources:
        raise DataError("FacesConfig.sources is empty (expected folders, globs or TFRecord files of face photos)")
    files = set()
    for source in cfg.sources:
        found = _expand(source)
        if not found:
            # A named source that holds nothing is a typo or the wrong folder: say so rather than train on less.
            raise DataError(f"{source}: no face images found in it (expected {_EXPECTED})")
        files.update(found)
    if exclude is not None:
        # A prepared directory inside a source folder must not read its own shards back as input.
        prefix = os.path.abspath(exclude) + os.sep
        files = {f for f in files if not f.startswith(prefix)}
    segments, total = [], 0
    for path in sorted(files):
        if cfg.max_images is not None and total >= cfg.max_images:
            break
        count = _count_records(path) if _is_tfrecord(path) else 1
        if cfg.max_images is not None:
            count = min(count, cfg.max_images - total)
        if count:
            segments.append(_Segment(path, count, _is_tfrecord(path)))
            total += count
    if not total:
        raise DataError(f"{', '.join(cfg.sources)}: no face images found (expected {_EXPECTED})")
    return segments


def list_face_files(cfg: FacesConfig) -> list[str]:
    """The input files in item order: sorted image files and TFRecord files (a TFRecord stands for its records).

    Folders are searched recursively (hidden files and folders ignored, suffixes case-insensitive), globs
    expanded; ``max_images`` cuts the item list. DataError names a missing source, or every source when
    none holds an image.
    """
    return [seg.path for seg in _segments(cfg)]


def _segment_starts(segments: list[_Segment]) -> list[int]:
    starts, total = [], 0
    for seg in segments:
        starts.append(total)
        total += seg.count
    return starts


def _items_of(segments: list[_Segment], starts: list[int], start: int, stop: int) -> list[tuple[_Segment, int, int]]:
    """(segment, first, stop) pieces covering input items [start, stop)."""
    # bisect, not a scan from the first segment: 200 shards x 200k files would be 40M Python steps.
    pieces = []
    for i in range(bisect.bisect_right(starts, start) - 1, len(segments)):
        seg, offset = segments[i], starts[i]
        if offset >= stop:
            break
        lo, hi = max(start, offset), min(stop, offset + seg.count)
        if lo < hi:
            pieces.append((seg, lo - offset, hi - offset))
    return pieces


# --------------------------------------------------------------------------- prepare


class _RecordCursor:
    """Forward-only reader of TFRecord files, kept open between shards.

    TFRecords have no random access; shards are written in increasing order, so one open reader per file
    reads each file once per worker instead of re-reading its head for every shard.
    """

    def __init__(self):
        self.path, self.iterator, self.pos, self.error = None, None, 0, None

    def _open(self, path):
        compression = "GZIP" if path.lower().endswith(".gz") else ""
        self.iterator = iter(tf.data.TFRecordDataset(path, compression_type=compression).as_numpy_iterator())
        self.path, self.pos, self.error = path, 0, None

    def _next(self):
        if self.error is None:
            try:
                raw = next(self.iterator)
                self.pos += 1
                return raw
            except StopIteration:
                self.error = "the file ends early (its record count changed?)"
            except tf.errors.OpError as e:
                self.error = f"unreadable TFRecord data from here on ({e.message.splitlines()[0]})"
        self.pos += 1
        return None

    def records(self, path: str, start: int, stop: int) -> Iterator[tuple[int, bytes | None, str | None]]:
        if path != self.path or start < self.pos:
            self._open(path)
        while self.pos < start:
            self._next()
        while self.pos < stop:
            index = self.pos
            raw = self._next()
            yield index, raw, (None if raw is not None else self.error)


def _shard_items(segments, starts, start, stop, cursor: _RecordCursor):
    """(where, path, raw record or None, error or None) for input items [start, stop), in order."""
    for seg, lo, hi in _items_of(segments, starts, start, stop):
        if not seg.tfrecord:
            yield seg.path, seg.path, None, None
            continue
        for index, raw, error in cursor.records(seg.path, lo, hi):
            yield f"{seg.path} record {index}", seg.path, raw, error


def _encode_png(crop: np.ndarray) -> bytes:
    buf = io.BytesIO()
    # compress_level 1: a 64x64 crop encodes in 0.33 ms vs 1.25 ms at the default 6, for 14% more bytes.
    Image.fromarray(crop).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _canonical_png(item, image_size: int, align: bool, image_key: str) -> tuple[str, str, bytes | str]:
    """("ok", where, png bytes) or ("corrupt" | "no_face", where, message): never raises for a bad item."""
    where, path, raw, error = item
    if error is not None:
        return "corrupt", where, f"{where}: {error}"
    try:
        if raw is None:
            image = load_image(path)
        else:
            try:
                feature = tf.train.Example.FromString(raw).features.feature
            except Exception as e:  # protobuf's DecodeError has no stable import path
                return "corrupt", where, f"{where}: not a tf.train.Example ({e})"
            if image_key not in feature or len(feature[image_key].bytes_list.value) != 1:
                return "corrupt", where, (f"{where}: expected one encoded image in bytes feature {image_key!r}; "
                                          f"features: {sorted(feature)}")
            image = decode_image_bytes(feature[image_key].bytes_list.value[0], where=where)
        if align:
            crop = align_lib.align_largest_face(image, size=image_size, where=where)
        else:
            crop = center_square_resize(image, image_size)
        return "ok", where, _encode_png(crop)
    except NoFaceError as e:
        return "no_face", where, str(e)
    except DataError as e:
        return "corrupt", where, str(e)
    except Exception as e:  # noqa: BLE001 - one strange photo (decompression bomb, odd mode) must not stop 200k
        return "corrupt", where, f"{where}: {type(e).__name__}: {e}"


def _bounded_map(pool, fn, items: Iterable, in_flight: int):
    """pool.map that keeps at most `in_flight` items pending (Executor.map submits the whole iterable,
    which for TFRecord inputs would hold a whole shard of raw photos in memory)."""
    pending = collections.deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= in_flight:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _example(png: bytes, source: str) -> bytes:
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
        "source": tf.train.Feature(bytes_list=tf.train.BytesList(value=[source.encode("utf-8", "surrogateescape")])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _shard_name(s: int) -> str:
    return f"shard-{s:05d}.tfrecord"


def _config_dict(cfg: FacesConfig) -> dict:
    # real_fraction only sets the mix at training time; the shards do not depend on it, so changing it
    # must not make a prepared 200k-image directory "different".
    d = dataclasses.asdict(cfg)
    d.pop("real_fraction")
    d["sources"] = [os.path.abspath(os.path.expanduser(s)) for s in cfg.sources]
    return d


def _want(cfg: FacesConfig, segments: list[_Segment]) -> dict:
    digest = hashlib.sha1()
    for seg in segments:
        digest.update(f"{seg.path}\0{seg.count}\n".encode("utf-8", "surrogateescape"))
    return {"kind": "faces", "config": _config_dict(cfg),
            "inputs": {"items": sum(s.count for s in segments), "files": len(segments), "sha1": digest.hexdigest()}}


def _differences(have: dict, want: dict) -> list[str]:
    return [f"{k}: {a!r} there, {b!r} now" for k, a, b in dict_differences(have, want)]


def _claim(out_dir: str, want: dict) -> None:
    """Refuse a directory prepared for other inputs or settings; record ours before the first shard.

    The same idea as pipelines.claim_shard_dir, with concise messages (a manifest can hold 1000 skips);
    several pre-pass workers may start at once: the first creates spec.json, the others compare with it.
    """
    os.makedirs(out_dir, exist_ok=True)
    want = json.loads(json.dumps(want))
    for name in (SPEC, MANIFEST):
        path = os.path.join(out_dir, name)
        if os.path.exists(path):
            with open(path) as f:
                have = json.load(f)
            diff = _differences(have, want)
            if diff:
                raise ValueError(f"{out_dir} already holds faces prepared differently ({path}: "
                                 f"{'; '.join(diff)[:2000]}). Use another directory or delete it.")
    path = os.path.join(out_dir, SPEC)
    have = claim_json(path, want)
    diff = _differences(have, want) if have is not None else []
    if diff:
        raise ValueError(f"{out_dir} is being prepared differently by another worker ({path}: "
                         f"{'; '.join(diff)[:2000]}). Use another directory or delete it.")


def _shard_done(out_dir: str, s: int) -> bool:
    # The JSON is replaced after the TFRecord, so both present means the shard is complete.
    base = os.path.join(out_dir, _shard_name(s))
    return os.path.exists(base) and os.path.exists(base[: -len(".tfrecord")] + ".json")


def _write_shard(out_dir, s, items, pool, threads, cfg) -> dict:
    path = os.path.join(out_dir, _shard_name(s))
    # Leftovers of a killed run of this shard (only this worker writes shard s, workers split s % W).
    for stale in glob.glob(glob.escape(path[: -len(".tfrecord")]) + ".*.tmp*"):
        os.remove(stale)
    info = {"shard": s, "file": _shard_name(s), "count": 0, "corrupt": [], "no_face": []}
    fn = lambda item: _canonical_png(item, cfg.image_size, cfg.align, cfg.image_key)  # noqa: E731
    with atomic_output(path) as tmp:  # atomic: a killed run never leaves half a shard under the final name
        with tf.io.TFRecordWriter(tmp) as writer:
            for kind, where, payload in _bounded_map(pool, fn, items, 4 * threads):
                if kind == "ok":
                    writer.write(_example(payload, where))
                    info["count"] += 1
                else:
                    info[kind].append({"where": where, "message": payload})
    write_json(path[: -len(".tfrecord")] + ".json", info)
    return info


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def prepare_faces(cfg: FacesConfig, out_dir: str, progress: bool | Callable[[int, int], None] = True,
                  worker: tuple[int, int] = (0, 1), num_threads: int | None = None) -> dict:
    """Decode every input photo, make it canonical and write sharded PNG TFRecords + a manifest (resumable).

    Input item i (sorted file order, TFRecord records in file order) goes to ``shard-{i // shard_size}``;
    each shard is written atomically with a ``shard-XXXXX.json`` (count, corrupt, no_face) and skipped on
    resume. Corrupt / truncated / empty files (and, with ``align``, photos without a face) are skipped,
    counted and listed (``skipped.txt``), never fatal. ``worker=(k, W)`` writes only shards ``s % W == k``.
    The manifest is written by whichever worker finds every shard complete; returns it (``complete: True``),
    or a status ``{"complete": False, "missing": [...], ...}`` while other workers' shards are missing.
    Raises DataError when no input is usable, ValueError when ``out_dir`` was prepared differently.
    ``num_threads``: decode threads (default: the CPUs this process may use).
    """
    k, n_workers = worker
    if not (isinstance(k, int) and isinstance(n_workers, int) and 0 <= k < n_workers):
        raise ValueError(f"prepare_faces: worker must be (k, W) with 0 <= k < W, got {worker!r}")
    out_dir = os.fspath(out_dir)
    segments = _segments(cfg, exclude=out_dir)
    want = _want(cfg, segments)
    _claim(out_dir, want)
    n_items = want["inputs"]["items"]
    n_shards = -(-n_items // cfg.shard_size)
    todo = [s for s in range(k, n_shards, n_workers) if not _shard_done(out_dir, s)]
    threads = num_threads or _default_threads()
    written, t0, done_items = [], time.time(), 0
    if todo:
        cursor, starts = _RecordCursor(), _segment_starts(segments)
        # A thread pool, not tf.data: measured on this 2-core machine (2k 128px JPEGs -> 64px PNG shards,
        # two runs) a pool of 2 threads prepares 1,350-1,500 images/s (1 thread: 1,090; 4: 1,440), while
        # tf.data map(numpy_function, AUTOTUNE, deterministic) of the same work does 690-710/s: PIL releases
        # the GIL while it decodes/resizes/encodes, and the pool avoids tf.data's per-element tensor
        # round trips. It also keeps MTCNN (itself TensorFlow) out of a tf.data function.
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            for i, s in enumerate(todo):
                start, stop = s * cfg.shard_size, min(n_items, (s + 1) * cfg.shard_size)
                _write_shard(out_dir, s, _shard_items(segments, starts, start, stop, cursor), pool, threads, cfg)
                written.append(s)
                done_items += stop - start
                if callable(progress):
                    progress(i + 1, len(todo))
                elif progress:
                    rate = done_items / max(time.time() - t0, 1e-9)
                    left = sum(min(n_items, (t + 1) * cfg.shard_size) - t * cfg.shard_size
                               for t in todo[i + 1:]) / max(rate, 1e-9)
                    print(f"\r  faces: shard {i + 1}/{len(todo)}  {rate:,.0f} images/s  ETA {left:,.0f} s",
                          end="", file=sys.stderr, flush=True)
        if progress is True:
            print(file=sys.stderr)
    missing = [s for s in range(n_shards) if not _shard_done(out_dir, s)]
    if missing:
        return {"complete": False, "out_dir": out_dir, "shards": n_shards, "missing": missing, "written": written}
    mpath = os.path.join(out_dir, MANIFEST)
    if not written and os.path.exists(mpath):
        with open(mpath) as f:
            return json.load(f)
    manifest = _finish(out_dir, cfg, want, n_shards)
    if written:
        manifest["images_per_s"] = done_items / max(time.time() - t0, 1e-9)
    write_json(mpath, manifest)
    return manifest


def _finish(out_dir: str, cfg: FacesConfig, want: dict, n_shards: int) -> dict:
    """The manifest from the shard JSONs (also writes skipped.txt); DataError if no face was kept."""
    shards, listed, counts = [], [], {"corrupt": 0, "no_face": 0}
    first_message = None
    with atomic_output(os.path.join(out_dir, SKIPPED)) as tmp, \
            open(tmp, "w", encoding="utf-8", errors="surrogateescape") as skipped_file:
        skipped_file.write("# kind\twhere\tmessage (items prepare_faces left out)\n")
        for s in range(n_shards):
            with open(os.path.join(out_dir, _shard_name(s)[: -len(".tfrecord")] + ".json")) as f:
                info = json.load(f)
            shards.append({"file": info["file"], "count": info["count"]})
            for kind in ("corrupt", "no_face"):
                counts[kind] += len(info[kind])
                for item in info[kind]:
                    first_message = first_message or item["message"]
                    skipped_file.write(f"{kind}\t{item['where']}\t{item['message']}\n")
                    if len(listed) < MAX_LISTED_SKIPS:
                        listed.append({"where": item["where"], "kind": kind, "message": item["message"]})
    found, kept = want["inputs"]["items"], sum(s["count"] for s in shards)
    if not kept:
        where = ", ".join(cfg.sources)
        if counts["no_face"] == found:
            raise DataError(f"no face found in any of {found} images under {where} "
                            f"(align=True; see {os.path.join(out_dir, SKIPPED)})")
        raise DataError(f"{where}: none of the {found} images is usable ({counts['corrupt']} unreadable, "
                        f"{counts['no_face']} without a face); first: {first_message}")
    return {**want, "complete": True, "n": kept, "image_size": cfg.image_size, "shards": shards,
            "report": {"found": found, "kept": kept, "corrupt": counts["corrupt"], "no_face": counts["no_face"],
                       "skipped": listed, "skipped_file": SKIPPED}}


# --------------------------------------------------------------------------- reading


_PARSE = {"image": tf.io.FixedLenFeature([], tf.string), "source": tf.io.FixedLenFeature([], tf.string)}


class FaceSet:
    """A prepared face directory: ``n`` canonical uint8 faces in manifest order (shard by shard)."""

    def __init__(self, out_dir: str, manifest: dict):
        self.out_dir = out_dir
        self.manifest = manifest
        self.n = int(manifest["n"])
        self.image_size = int(manifest["image_size"])
        self.files = [os.path.join(out_dir, s["file"]) for s in manifest["shards"]]
        self.counts = np.asarray([s["count"] for s in manifest["shards"]], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # face i is in shard searchsorted(...)

    @classmethod
    def open(cls, out_dir: str) -> "FaceSet":
        out_dir = os.fspath(out_dir)
        mpath = os.path.join(out_dir, MANIFEST)
        if not os.path.exists(mpath):
            raise FileNotFoundError(f"{out_dir}: no {MANIFEST}; the face set is incomplete or was never "
                                    f"prepared (run prepare_faces again, it resumes)")
        with open(mpath) as f:
            manifest = json.load(f)
        if manifest.get("kind") != "faces":
            raise ValueError(f"{out_dir}: {MANIFEST} is not a prepared face set (kind={manifest.get('kind')!r})")
        face_set = cls(out_dir, manifest)
        lost = [os.path.basename(p) for p in face_set.files if not os.path.exists(p)]
        if lost:
            raise FileNotFoundError(f"{out_dir}: shard file(s) {lost[:5]} are missing "
                                    f"(run prepare_faces again to rewrite them)")
        return face_set

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"FaceSet({self.out_dir!r}, n={self.n}, image_size={self.image_size}, shards={len(self.files)})"

    def _check_range(self, start: int, stop: int) -> None:
        if not (0 <= start <= stop <= self.n):
            raise IndexError(f"FaceSet.read({start}, {stop}): the face set {self.out_dir} has {self.n} faces "
                             f"(need 0 <= start <= stop <= {self.n})")

    def _records(self, start: int, stop: int, key: str):
        for s in np.flatnonzero((self.offsets[:-1] < stop) & (self.offsets[1:] > start)):
            lo, hi = max(start, self.offsets[s]) - self.offsets[s], min(stop, self.offsets[s + 1]) - self.offsets[s]
            ds = tf.data.TFRecordDataset(self.files[s]).skip(int(lo)).take(int(hi - lo))
            yield ds.map(lambda r: tf.io.parse_single_example(r, _PARSE)[key])

    def read(self, start: int, stop: int) -> np.ndarray:
        """Faces [start, stop) as uint8 [k, S, S, 3], reading only the shards that overlap."""
        self._check_range(start, stop)
        S = self.image_size
        out = np.empty((stop - start, S, S, 3), np.uint8)
        at = 0
        for ds in self._records(start, stop, "image"):
            ds = ds.map(lambda b: tf.ensure_shape(tf.io.decode_png(b, channels=3), [S, S, 3]),
                        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).batch(256)
            for batch in ds.as_numpy_iterator():
                out[at : at + len(batch)] = batch
                at += len(batch)
        return out

    def sources(self, start: int, stop: int) -> list[str]:
        """The original file (or "file record i") of faces [start, stop)."""
        self._check_range(start, stop)
        return [s.decode("utf-8", "surrogateescape") for ds in self._records(start, stop, "source")
                for s in ds.as_numpy_iterator()]

    @property
    def report(self) -> dict:
        return self.manifest["report"]


# --------------------------------------------------------------------------- stream


def _shuffle(index, seed, epoch, salt, max_index):
    seeds = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64), tf.cast(salt, tf.int64)])
    # The raw op, as in distribute.make_step_index_dataset (the public wrapper mis-pads seeds in TF 2.21).
    return tf.raw_ops.RandomIndexShuffle(index=index, seed=seeds, max_index=tf.cast(max_index, tf.int64), rounds=4)


def make_faces_dataset(face_set: FaceSet, batch_size: int, start_step: int = 0, seed: int = 0,
                       input_context: tf.distribute.InputContext | None = None,
                       augment_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                       num_parallel_calls=tf.data.AUTOTUNE, prefetch: int = 2) -> tf.data.Dataset:
    """Endless uint8 [batch_size, S, S, 3] batches of prepared faces; a pure function of (seed, step).

    Stream position p is face ``order_e(p mod n)`` of epoch ``e = p // n``. ``order_e`` visits the shards
    in a seeded per-epoch order and the faces of each shard in a seeded per-(epoch, shard) order, so each
    epoch shows every face once and TFRecords are only ever read sequentially, one shard (a few MB) at a time.
    Global step g covers positions [g*B, (g+1)*B), B = batch_size * num_replicas_in_sync; replica r takes
    [g*B + r*batch_size, ...) (distribute.make_step_index_dataset's convention), so a trainer resumed at
    ``start_step`` sees exactly the batches of an uninterrupted run, and input pipelines are disjoint.
    ``augment_fn(images uint8 [b,S,S,3], positions int64 [b]) -> images`` runs per batch (numpy); it runs in
    a parallel map, ahead of the consumer, so it must be a pure function of its inputs (seed it by position).
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"make_faces_dataset: batch_size must be a positive int, got {batch_size!r}")
    if start_step < 0:
        raise ValueError(f"make_faces_dataset: start_step must be >= 0, got {start_step}")
    if face_set.n < 1:
        raise ValueError(f"make_faces_dataset: {face_set.out_dir} holds no faces")
    replicas, pipelines, pipeline = 1, 1, 0
    if input_context is not None:
        replicas = input_context.num_replicas_in_sync
        pipelines, pipeline = input_context.num_input_pipelines, input_context.input_pipeline_id
    local = replicas // pipelines
    # Within each global step's B positions, this pipeline owns [pipeline * chunk, (pipeline + 1) * chunk).
    B, chunk = batch_size * replicas, batch_size * local
    S, n = face_set.image_size, face_set.n
    keep = np.flatnonzero(face_set.counts > 0)  # shards that lost every photo have nothing to visit
    files = tf.constant([face_set.files[i] for i in keep])
    counts = tf.constant(face_set.counts[keep], tf.int64)
    n_shards = len(keep)
    shard_ids = tf.constant(keep, tf.int64)  # salts the within-shard order by the shard's real number
    max_count = int(face_set.counts.max())

    def visit_plan(v):
        epoch, j = v // n_shards, v % n_shards
        order = _shuffle(tf.range(n_shards, dtype=tf.int64), seed, epoch, 0, n_shards - 1)
        ordered_counts = tf.gather(counts, order)
        before = tf.reduce_sum(ordered_counts[:j])
        return epoch, order[j], epoch * n + before, ordered_counts[j]

    start_pos = int(start_step) * B
    # The visit holding start_pos (computed eagerly with the same function): resuming deep into an epoch
    # must not re-read the shards before it.
    e0, within = divmod(start_pos, n)
    ordered = tf.gather(counts, _shuffle(tf.range(n_shards, dtype=tf.int64), seed, e0, 0, n_shards - 1)).numpy()
    first_visit = e0 * n_shards + int(np.searchsorted(np.cumsum(ordered), within, side="right"))

    def load(v):
        _, shard, _, _ = visit_plan(v)
        records = tf.data.TFRecordDataset(tf.gather(files, shard)).batch(max_count)
        return records.map(lambda r: (r, v))

    def select(records, v):
        epoch, shard, base, count = visit_plan(v)
        tf.debugging.assert_equal(tf.shape(records, out_type=tf.int64)[0], count,
                                  message="shard record count differs from the manifest")
        images = tf.io.parse_example(records, {"image": _PARSE["image"]})["image"]
        offsets = _shuffle(tf.range(count), seed, epoch, 1 + tf.gather(shard_ids, shard), count - 1)
        positions = base + tf.range(count)
        mine = (positions >= start_pos) & ((positions % B) // chunk == pipeline) if pipelines > 1 \
            else positions >= start_pos
        return tf.gather(images, tf.boolean_mask(offsets, mine)), tf.boolean_mask(positions, mine)

    def decode(pngs, positions):
        images = tf.map_fn(lambda png: tf.io.decode_png(png, channels=3), pngs,
                           fn_output_signature=tf.TensorSpec([S, S, 3], tf.uint8))
        return tf.ensure_shape(images, [batch_size, S, S, 3]), positions

    ds = tf.data.Dataset.range(first_visit, 2**62).flat_map(load)
    ds = ds.map(select).unbatch().batch(batch_size, drop_remainder=True)
    # Decoding whole batches in a parallel map costs ~150 us of CPU per 64px face vs ~180 us for a
    # per-face parallel map (measured on this 2-core machine): tf.io.decode_png itself is ~135-150 us,
    # the rest is per-element tf.data overhead. Throughput is CPU-bound at ~2 cores / 150 us.
    ds = ds.map(decode, num_parallel_calls=num_parallel_calls, deterministic=True)
    if augment_fn is not None:
        def augment(images, positions):
            out = tf.numpy_function(augment_fn, [images, positions], tf.uint8, stateful=False)
            return tf.ensure_shape(out, [batch_size, S, S, 3])
        ds = ds.map(augment, num_parallel_calls=num_parallel_calls, deterministic=True)
    else:
        ds = ds.map(lambda images, positions: images)
    return ds.prefetch(prefetch)


def measure_stream(face_set: FaceSet, batch_size: int, n_batches: int, seed: int = 0) -> float:
    """Images per second of make_faces_dataset after one warm-up batch (for the benchmark)."""
    iterator = iter(make_faces_dataset(face_set, batch_size, seed=seed))
    next(iterator)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        next(iterator)
    return n_batches * batch_size / (time.perf_counter() - t0)
