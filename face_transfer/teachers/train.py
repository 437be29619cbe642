"""Training the zoo teachers on their source tasks (model.fit under a tf.distribute strategy).

Resumable: a checkpoint (model + optimizer) every `checkpoint_every` steps; restarting the same
call continues from the last one, on the same stream of faces. `teacher.json` is written last.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from face_transfer import distribute
from face_transfer.core.digest import file_digest
from face_transfer.core.errors import CorruptArtifactError
from face_transfer.core.fileio import atomic_output, dict_differences, read_json, write_json
from face_transfer.core.runpaths import MANIFEST_JSON, TEACHER_JSON
from face_transfer.data import synth
from face_transfer.data.pipelines import make_stream_dataset
from face_transfer.integrity import load_keras_model, notice
from face_transfer.teachers import zoo
from face_transfer.teachers.adapters import keras_model_teacher, preprocess
from face_transfer.teachers.config import InputSpec, TeacherSpec, TeacherTrainConfig


class _EpochCheckpoint(keras.callbacks.Callback):
    """Saves model+optimizer and the epoch reached, atomically, at the end of every epoch."""

    def __init__(self, ckpt_dir, write, seconds_before: float = 0.0):
        super().__init__()
        self.ckpt_dir, self.write = ckpt_dir, write
        self.seconds_before, self.t0 = seconds_before, time.time()  # training time of earlier invocations

    def on_epoch_end(self, epoch, logs=None):
        if not self.write:
            return
        # The previous checkpoint stays as prev.keras (+ prev_state.json): a damaged last.keras falls back to it.
        last, prev = os.path.join(self.ckpt_dir, "last.keras"), os.path.join(self.ckpt_dir, "prev.keras")
        state, prev_state = os.path.join(self.ckpt_dir, "state.json"), os.path.join(self.ckpt_dir, "prev_state.json")
        with atomic_output(last, suffix=".keras") as tmp:
            self.model.save(tmp)
            if os.path.exists(last) and os.path.exists(state):
                os.replace(last, prev)
                os.replace(state, prev_state)
        write_json(state, {"epochs_done": epoch + 1, "time": time.time(),
                           "seconds": round(self.seconds_before + time.time() - self.t0, 1)})


def resume_from_checkpoint(ckpt_dir):
    """(compiled model, epochs done) from the newest intact epoch checkpoint, or (None, 0)."""
    tried = []
    for model_name, state_name in (("last.keras", "state.json"), ("prev.keras", "prev_state.json")):
        path, state = os.path.join(ckpt_dir, model_name), os.path.join(ckpt_dir, state_name)
        if not (os.path.exists(path) and os.path.exists(state)):
            continue
        try:
            with open(state) as f:
                epochs = json.load(f)["epochs_done"]
            # Compiled reload: the optimizer's moments and iteration count come back too.
            model = load_keras_model(path, "teacher checkpoint")
        except (CorruptArtifactError, ValueError, KeyError, OSError) as e:
            tried.append((path, str(e).splitlines()[0][:200]))
            continue
        if tried:
            notice(f"checkpoint {tried[0][0]} is corrupt; resumed from {path} (epoch {epochs}) instead")
        return model, epochs
    if tried:
        notice(f"no intact checkpoint in {ckpt_dir} (newest {tried[0][0]}: {tried[0][1]}); training from the start")
    return None, 0


def _dataset(spec, synth_cfg, cfg, start_index, stream):
    keys = zoo.SOURCE_TASKS[spec.source_task]

    def prep(images, labels):
        return preprocess(images, spec.input_spec), zoo.targets_from_labels(spec, labels)

    ds = make_stream_dataset(synth_cfg, cfg.batch_size, stream=stream, pool="train",
                             domain=cfg.domain, label_keys=keys, start_index=start_index)
    return ds.map(prep, num_parallel_calls=tf.data.AUTOTUNE)


def _compile(model, spec, cfg, total_steps):
    warmup = max(1, total_steps // 10)  # linear warm-up: large early steps kill ReLU units
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate / 10, max(1, total_steps - warmup),
                                                      alpha=0.02, warmup_target=cfg.learning_rate,
                                                      warmup_steps=warmup)
    opt = keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cfg.weight_decay)
    model.compile(optimizer=opt, loss=zoo.losses_for(spec, cfg.cosface_scale, cfg.cosface_margin),
                  jit_compile=False)


def train_teacher(spec: TeacherSpec, synth_cfg: synth.SynthConfig, cfg: TeacherTrainConfig,
                  out_dir: str, strategy: tf.distribute.Strategy | None = None) -> dict:
    """Train one teacher into `out_dir` (resuming if a checkpoint is there); return its record."""
    strategy = strategy or tf.distribute.get_strategy()
    done = os.path.join(out_dir, TEACHER_JSON)
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)
    if cfg.pretrained:
        return install_pretrained(spec, cfg.pretrained, out_dir, write=distribute.is_chief(strategy))
    write = distribute.is_chief(strategy)
    ckpt_dir = os.path.join(out_dir, "ckpt")
    os.makedirs(ckpt_dir, exist_ok=True)
    spe = max(1, min(cfg.checkpoint_every, cfg.steps))
    epochs = (cfg.steps + spe - 1) // spe
    initial_epoch = 0
    with strategy.scope():
        state = os.path.join(ckpt_dir, "state.json")
        model = None
        if os.path.exists(state) and os.path.exists(os.path.join(ckpt_dir, "last.keras")):
            model, initial_epoch = resume_from_checkpoint(ckpt_dir)
        warm = _warm_start(spec, cfg.warm_start) if cfg.warm_start else None
        if model is None:
            if warm:
                model = load_keras_model(warm["from"], "warm-start teacher", compile=False)
                for layer in model.layers:  # saved frozen: `zoo.embedding_model` froze the layers it shares
                    layer.trainable = True
                if warm["head_changed"]:
                    # a new head on the trained network, as one fine-tunes an existing model for a new output
                    fresh = zoo.build_teacher(spec, synth_cfg.n_train_identities)
                    warm["new_layers"] = zoo.copy_matching_weights(model, fresh)
                    model = fresh
            else:
                model = zoo.build_teacher(spec, synth_cfg.n_train_identities)
            _compile(model, spec, cfg, epochs * spe)
    seconds_before = 0.0  # the training seconds of the checkpoint resumed from (its state file)
    if initial_epoch:
        for name in ("state.json", "prev_state.json"):
            p = os.path.join(ckpt_dir, name)
            if os.path.exists(p) and read_json(p).get("epochs_done") == initial_epoch:
                seconds_before = float(read_json(p).get("seconds", 0.0))
                break
    # a warm-started teacher goes on to faces it has not seen: the stream continues after its earlier training's
    steps_before = warm["steps_total"] if warm else 0
    start = (steps_before + initial_epoch * spe) * cfg.batch_size
    ds = _dataset(spec, synth_cfg, cfg, start, stream=f"teacher:{spec.name}")
    t0 = time.time()
    if initial_epoch < epochs:
        callbacks = [_EpochCheckpoint(ckpt_dir, write, seconds_before)]
        if write:
            callbacks.append(keras.callbacks.TensorBoard(os.path.join(out_dir, "tb"), update_freq=50))
        # A live progress bar on a terminal; one line per epoch in a log file.
        verbose = cfg.verbose if (cfg.verbose != 1 or sys.stdout.isatty()) else 2
        model.fit(ds, epochs=epochs, initial_epoch=initial_epoch, steps_per_epoch=spe,
                  callbacks=callbacks, verbose=verbose, shuffle=False)
    train_s = time.time() - t0
    metrics = evaluate_teacher(model, spec, synth_cfg, cfg)
    record = {
        "name": spec.name, "arch": spec.arch, "source_task": spec.source_task,
        "spec": dataclasses.asdict(spec), "input_spec": dataclasses.asdict(spec.input_spec),
        "embedding_layer": "embedding", "embedding_dim": spec.embedding_dim,
        "params_total": int(model.count_params()),
        "params_embedding": int(zoo.embedding_model(model, freeze=False).count_params()),
        "steps": epochs * spe, "steps_total": steps_before + epochs * spe, "batch_size": cfg.batch_size,
        "train_seconds_this_run": round(train_s, 1),
        # across resumed invocations, and the warm start's own training
        "train_seconds_total": round((warm["train_seconds_total"] if warm else 0.0) + seconds_before + train_s, 1),
        **({"warm_start": warm} if warm else {}),
        "metrics": metrics, "main_score": zoo.main_score(metrics),
    }
    if write:
        model.save(os.path.join(out_dir, "model.keras"))
        write_json(done, record)
    return record


# Spec fields a warm start may change: they shape a source-task head, not the network that computes the embedding.
HEAD_FIELDS = ("age_head",)


def _warm_start(spec: TeacherSpec, where: str) -> dict:
    """What a warm-started teacher starts from: the verified file and the training it already had."""
    src, entry, _, sha = verified_pretrained(spec, where, may_differ=HEAD_FIELDS)
    rec = entry["record"]
    was = recorded_spec(entry, src)
    return {"from": src, "sha256": sha, "steps_total": int(rec.get("steps_total", rec["steps"])),
            "train_seconds_total": float(rec.get("train_seconds_total", 0.0)), "metrics": rec.get("metrics", {}),
            "head_changed": {f: [getattr(was, f), getattr(spec, f)] for f in HEAD_FIELDS
                             if getattr(was, f) != getattr(spec, f)}}


def evaluate_teacher(model, spec, synth_cfg, cfg) -> dict:
    """Source-task metrics on fresh faces of the training identities (a held-out image stream)."""
    keys = zoo.SOURCE_TASKS[spec.source_task]
    images, labels = synth.render_faces(synth_cfg, np.arange(cfg.eval_images), stream=f"teacher_val:{spec.name}",
                                        pool="train", domain=cfg.domain)
    x = preprocess(images, spec.input_spec)
    out = model.predict(x, batch_size=256, verbose=0)
    return zoo.source_metrics(spec, out, {k: labels[k] for k in keys})


def load_zoo_teacher(teacher_dir: str):
    """A trained zoo teacher as a frozen `Teacher` (embedding layer, its own input spec inside)."""
    path = os.path.join(teacher_dir, TEACHER_JSON)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{teacher_dir}: no {TEACHER_JSON}; the teacher is not trained (yet)")
    with open(path) as f:
        record = json.load(f)
    model = load_keras_model(os.path.join(teacher_dir, "model.keras"), "teacher model", compile=False)
    spec = InputSpec(**record["input_spec"])
    teacher = keras_model_teacher(zoo.embedding_model(model), None, record["name"], spec)
    teacher.metadata.update({"source": teacher_dir, "record": record})
    return teacher


# ---- pretrained zoo teachers: trained once, shipped, installed into a run instead of training ---------------

PRETRAINED_MANIFEST = MANIFEST_JSON
PACKAGE_ZOO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "zoo")


def pretrained_dir(where: str) -> str:
    """The directory of a `TeacherTrainConfig.pretrained` value ("package" = the zoo shipped with face-transfer)."""
    return PACKAGE_ZOO if where == "package" else where


def _spec_json(spec) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(spec)))


def package_pretrained(teacher_dirs: dict, out_dir: str, synth_cfg: synth.SynthConfig, note: str = "",
                       base: str | None = None) -> dict:
    """Copy trained zoo teachers ({name: run teacher dir}) into `out_dir` with a manifest of their records,
    sizes and SHA-256: what `install_pretrained` checks before a run uses them.

    `base`: an existing zoo folder (or "package") whose other teachers are carried over, each checked against its
    manifest first, so that retraining one teacher of a zoo gives a whole zoo; the run's teachers replace the
    same-named ones. Both must have been trained on the same SynthFaces configuration."""
    manifest = {"synth": dataclasses.asdict(synth_cfg), "note": note, "teachers": {}}
    carried = carried_teachers(base, out_dir, synth_cfg, teacher_dirs) if base is not None else None
    if carried is not None:  # every base file checked above, before anything is written
        root, old, entries = carried
        for name, (src, entry) in entries.items():
            os.makedirs(os.path.join(out_dir, name), exist_ok=True)
            with atomic_output(os.path.join(out_dir, name, "model.keras"), suffix=".keras") as tmp:
                shutil.copyfile(src, tmp)
            _verified_file(out_dir, name, entry, "the updated zoo")  # the copy, too
            manifest["teachers"][name] = entry
        manifest["updated_from"] = {"zoo": os.path.realpath(root), "note": old.get("note", ""),
                                    "replaced": sorted(n for n in teacher_dirs if n in old.get("teachers", {})),
                                    "added": sorted(n for n in teacher_dirs if n not in old.get("teachers", {})),
                                    **({"updated_from": old["updated_from"]} if "updated_from" in old else {})}
    for name, src in teacher_dirs.items():
        with open(os.path.join(src, TEACHER_JSON)) as f:
            record = json.load(f)
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
        dst = os.path.join(out_dir, name, "model.keras")
        # the weights alone: without the optimizer's state the file is ~3x smaller
        model = load_keras_model(os.path.join(src, "model.keras"), "teacher model", compile=False)
        with atomic_output(dst, suffix=".keras") as tmp:
            model.save(tmp)
        sha, size = file_digest(dst)
        manifest["teachers"][name] = {"record": record, "sha256": sha, "bytes": size, "note": note}
    write_json(os.path.join(out_dir, PRETRAINED_MANIFEST), manifest)
    return manifest


def carried_teachers(base: str, out_dir: str, synth_cfg: synth.SynthConfig, replaced) -> tuple[str, dict, dict]:
    """The teachers of the zoo `base` that `replaced` leaves: (its folder, its manifest, {name: (model file, manifest
    entry with its own note)}), every file checked against its SHA-256 first."""
    root = pretrained_dir(base)
    if os.path.exists(out_dir) and os.path.exists(root) and os.path.samefile(root, out_dir):
        raise ValueError(f"{out_dir}: the zoo to update is also the output folder; write the updated zoo elsewhere")
    mpath = os.path.join(root, PRETRAINED_MANIFEST)
    if not os.path.exists(mpath):
        raise FileNotFoundError(f"{mpath}: no such file ({base!r} should be a directory written by "
                                "export.package_zoo, or 'package')")
    old = read_json(mpath)
    want = dataclasses.asdict(synth_cfg)
    if old.get("synth") != want:
        had = old.get("synth")
        diff = ", ".join(f"{k}: {a!r} vs {b!r}" for k, a, b in dict_differences(had or {}, want)) or f"{had!r} vs {want!r}"
        raise ValueError(f"{mpath}: its teachers were trained on another SynthFaces configuration than the run's "
                         f"({diff}); package the run on its own")
    entries = {name: (_verified_file(root, name, entry, mpath), {**entry, "note": entry.get("note", old.get("note", ""))})
               for name, entry in old.get("teachers", {}).items() if name not in replaced}
    return root, old, entries


def _verified_file(root: str, name: str, entry: dict, mpath: str) -> str:
    """The model file of zoo teacher `name` under `root`, after checking its size and SHA-256 against `entry`."""
    src = os.path.join(root, name, "model.keras")
    if not os.path.exists(src):
        raise FileNotFoundError(f"{src}: no such file (listed in {mpath})")
    sha, size = file_digest(src)
    if (sha, size) != (entry["sha256"], entry["bytes"]):
        raise CorruptArtifactError(f"{src}: {size:,} bytes, SHA-256 {sha[:12]}..., but {mpath} records "
                                   f"{entry['bytes']:,} bytes, {entry['sha256'][:12]}...; the file is damaged or was "
                                   "replaced: restore it (git checkout) or rebuild the zoo (`make zoo`, `make zoo-paper`)")
    return src


def recorded_spec(entry: dict, where: str) -> TeacherSpec:
    """The TeacherSpec a zoo manifest records (fields a zoo older than them does not record take their defaults)."""
    try:
        return TeacherSpec(**entry["record"]["spec"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: the recorded spec of {entry['record'].get('name')!r} is not a teacher spec this "
                         f"face-transfer reads ({e}); rebuild the zoo") from e


def verified_pretrained(spec: TeacherSpec, where: str, may_differ: tuple = ()) -> tuple[str, dict, dict, str]:
    """The model file of the pretrained teacher `spec.name` in `where`, its manifest entry, the manifest and the
    file's SHA-256, after checking that it is the architecture the config asks for (but for the spec fields
    `may_differ`) and that the file is intact."""
    root = pretrained_dir(where)
    mpath = os.path.join(root, PRETRAINED_MANIFEST)
    if not os.path.exists(mpath):
        raise FileNotFoundError(f"{mpath}: no such file ({where!r} should be a directory written by `make zoo` / "
                                "export.package_zoo, or 'package')")
    with open(mpath) as f:
        manifest = json.load(f)
    entry = manifest.get("teachers", {}).get(spec.name)
    if entry is None:
        raise ValueError(f"{mpath}: no pretrained teacher {spec.name!r} (it holds {sorted(manifest.get('teachers', {}))}); "
                         "train it with --teacher_pretrained='' or rebuild the zoo with `make zoo`")
    diff = [d for d in dict_differences(_spec_json(recorded_spec(entry, mpath)), _spec_json(spec))
            if d[0] not in may_differ]
    if diff:
        raise ValueError(f"{mpath}: the pretrained {spec.name!r} is not the teacher the config asks for "
                         f"(differs in {', '.join(f'{k}: {a!r} vs {b!r}' for k, a, b in diff)}); "
                         "train it with --teacher_pretrained='' or rebuild the zoo with `make zoo`")
    src = _verified_file(root, spec.name, entry, mpath)
    return src, entry, manifest, entry["sha256"]


def install_pretrained(spec: TeacherSpec, where: str, out_dir: str, write: bool = True) -> dict:
    """Put the pretrained teacher `spec.name` of `where` into `out_dir` (model.keras + teacher.json), after
    `verified_pretrained`'s checks; its record."""
    src, entry, manifest, sha = verified_pretrained(spec, where)
    record = {**entry["record"], "pretrained": {"from": src, "sha256": sha, "note": entry.get("note", manifest.get("note", "")),
                                                "synth": manifest.get("synth")},
              "train_seconds_this_run": 0.0}
    if write:
        os.makedirs(out_dir, exist_ok=True)
        dst = os.path.join(out_dir, "model.keras")
        with atomic_output(dst) as tmp:
            shutil.copyfile(src, tmp)
        write_json(os.path.join(out_dir, TEACHER_JSON), record)
    return record
