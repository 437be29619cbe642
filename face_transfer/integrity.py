"""Trust nothing on disk blindly: artifact digests for the stages' completion records, Keras-file checks that
say "corrupt" (not "not found"), and checkpoint restores that fall back to the newest intact checkpoint.
"""
from __future__ import annotations

import os
import sys
import zipfile

from face_transfer.core.digest import file_digest
from face_transfer.core.errors import CorruptArtifactError

# Files that are written while a stage runs and are never part of what it produced.
_SKIP_SUFFIXES = (".tmp", ".lock")
# export/web is the browser page (face_transfer.deploy.web): a view rebuilt from the export's files by
# `make web` / serve_web --build, so rebuilding it must not look like a damaged export.
_SKIP_DIRS = ("tb", "ckpt", "__pycache__", "web")


def notice(line: str):
    print(f"  !! {line}", file=sys.stderr, flush=True)


def artifact_files(root: str, path: str) -> list[str]:
    """Files under `path` (a file or a directory), relative to `root`, without temp files, TensorBoard logs and
    checkpoints (those belong to the resumption of a stage, not to what it produced)."""
    if os.path.isfile(path):
        return [os.path.relpath(path, root)]
    out = []
    for d, dirs, names in os.walk(path):
        dirs[:] = sorted(x for x in dirs if x not in _SKIP_DIRS)
        for n in sorted(names):
            if ".tmp" in n or n.endswith(_SKIP_SUFFIXES):
                continue
            out.append(os.path.relpath(os.path.join(d, n), root))
    return out


def digest_artifacts(root: str, paths) -> dict:
    """{relative path: {"bytes", "sha256"}} of every artifact file under `paths`."""
    out = {}
    for p in paths:
        p = p if os.path.isabs(p) else os.path.join(root, p)
        if not os.path.exists(p):
            continue
        for rel in artifact_files(root, p):
            sha, n = file_digest(os.path.join(root, rel))
            out[rel] = {"bytes": n, "sha256": sha}
    return out


def verify_artifacts(root: str, artifacts: dict) -> list[tuple[str, str]]:
    """[(relative path, what is wrong)] for recorded artifacts that are missing or changed."""
    bad = []
    for rel, want in artifacts.items():
        path = os.path.join(root, rel)
        if not os.path.exists(path):
            bad.append((rel, "missing"))
            continue
        size = os.path.getsize(path)
        if size != want["bytes"]:
            bad.append((rel, f"{size:,} bytes, recorded {want['bytes']:,}"))
            continue
        if file_digest(path)[0] != want["sha256"]:
            bad.append((rel, "content changed (SHA-256 differs from the record)"))
    return bad


def check_keras_file(path: str, what: str = "Keras model"):
    """FileNotFoundError if absent; CorruptArtifactError naming the file if it is not an intact .keras zip."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file (expected a {what})")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise CorruptArtifactError(f"{path}: corrupt {what} file ({type(e).__name__}: {e}); delete it to "
                                   "recompute it, or restore it from a backup") from None
    if bad is not None:
        raise CorruptArtifactError(f"{path}: corrupt {what} file (member {bad} fails its CRC check)")


def load_keras_model(path: str, what: str = "Keras model", **kwargs):
    """keras.models.load_model after check_keras_file: a damaged file is reported as corrupt, by name."""
    import keras
    check_keras_file(path, what)
    try:
        return keras.models.load_model(path, **kwargs)
    except Exception as e:  # keras wraps I/O errors of damaged archives in many types
        raise CorruptArtifactError(f"{path}: could not load the {what} ({type(e).__name__}: {e})") from e


def restore_newest_intact(checkpoint, checkpoint_dir: str) -> str | None:
    """Restore the newest checkpoint in `checkpoint_dir` that reads back; older ones are tried in turn.

    Returns the restored path (None if there is none). A damaged newest checkpoint is reported by name with
    the one used instead.
    """
    import tensorflow as tf
    state = tf.train.get_checkpoint_state(checkpoint_dir)
    candidates = list(reversed(list(state.all_model_checkpoint_paths))) if state else []
    latest = tf.train.latest_checkpoint(checkpoint_dir)
    if latest and latest not in candidates:
        candidates.insert(0, latest)
    failed = []
    for path in candidates:
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except Exception as e:  # damaged index/data files raise OpError, IndexError, ValueError, ...
            failed.append((path, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"))
            continue
        if failed:
            notice(f"checkpoint {failed[0][0]} is corrupt ({failed[0][1]}); resumed from {path} instead")
        return path
    if failed:
        notice(f"no intact checkpoint in {checkpoint_dir} ({len(failed)} damaged, newest {failed[0][0]}); "
               "starting from step 0")
    return None
