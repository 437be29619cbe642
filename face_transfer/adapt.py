"""Transfer as a product: a distilled student adapted to a user's new labelled tasks, without re-distilling.

A *student bundle* is what the export stage leaves next to the deployable files (`<run>/export/`): the Keras
student (`student.keras`), the view its heads read (`bundle.json`: "ladder" or "embedding"), and the analyser's
heads (`analyzer_heads.npz` parameters, `analyzer_heads.json` names, classes, units, training data).
`adapt` fits heads for new tasks on it, linearly on the frozen features (mode "linear", as the probes do) or by
fine-tuning the student after the heads (mode "finetune", with a distillation term to the frozen student's
features, LwF-style, so the old heads keep working), scores each new task on a held-out split and, when the
old heads' data is there (a run directory), every old head before and after. `export_analyzer` then writes the
new analyser: SavedModel, int8 TFLite with metadata, ONNX and the browser page.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np

from face_transfer.core.fileio import read_json, write_json
from face_transfer.core.runpaths import ExportPaths, RunPaths
from face_transfer.deploy.bundle import StudentBundle, analyzer_outputs_metadata, load_bundle, save_bundle

MODES = ("linear", "finetune")


class AdaptUsageError(ValueError):
    """An adaptation asked for something it must refuse (an --out that is the run, a head name clash, ...)."""


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    mode: str = "linear"
    finetune_steps: int = 1000  # student updates after the heads (mode "finetune")
    batch_size: int = 32
    # the student's. 1e-4 did not move it on a 3,000-face task in 1,500 steps (BENCHMARKS.md, "Adapting")
    learning_rate: float = 1e-3
    head_learning_rate: float = 1e-3
    # weight of the LwF term (the student's features stay near the frozen ones): it trades the new task's gain
    # against the old tasks' drop (BENCHMARKS.md, "Adapting the student to a new task", measures the trade-off)
    keep_weight: float = 3.0
    # faces of the run's own unlabelled source (what the student was distilled on) that the LwF term also sees,
    # a batch of them per step next to the new images: it keeps what the new data does not show (0: new images only)
    replay_faces: int = 4096
    # fine-tune only the last `tune_stages` resolution stages (and the code head); the earlier ones, and so their
    # part of the ladder features, stay exactly as distilled (0: every layer)
    tune_stages: int = 0
    freeze_batchnorm: bool = True  # keep the distillation's BN statistics (inference-mode BN while fine-tuning)
    replace_heads: bool = False  # a new task named like an existing head replaces it (else an error)
    test_fraction: float = 0.2  # held out for the scores; the heads shipped are fitted on the rest
    seed: int = 0
    checkpoint_every: int = 100

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"AdaptConfig.mode={self.mode!r}; expected one of {MODES}")
        if self.finetune_steps < 0 or self.batch_size < 1:
            raise ValueError(f"AdaptConfig: finetune_steps={self.finetune_steps}, batch_size={self.batch_size}; "
                             "expected >= 0 and >= 1")
        if self.keep_weight < 0 or self.replay_faces < 0 or self.tune_stages < 0:
            raise ValueError(f"AdaptConfig: keep_weight={self.keep_weight}, replay_faces={self.replay_faces}, "
                             f"tune_stages={self.tune_stages}; expected >= 0")
        if not 0 < self.test_fraction < 0.5:
            raise ValueError(f"AdaptConfig.test_fraction={self.test_fraction}; expected in (0, 0.5)")


# ---- new tasks ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class NewTaskData:
    task: object  # data.tasks.Task
    images: np.ndarray
    labels: dict
    meta: dict  # the task set's meta (taskset.json)
    train: np.ndarray  # indices the heads (and the fine-tuning) see: the probe split's train + val
    test: np.ndarray  # held out for the score
    probe_cfg: object  # evaluation.probes.ProbeConfig whose split (seed) gives train/val/test
    seed: int


def read_new_tasks(task_sets, image_size: int, cfg: AdaptConfig, existing_heads=()) -> list[NewTaskData]:
    """Every labelled column of the `task_sets` (data.tasksets.TaskSetConfig) as a new task with a seeded,
    identity-disjoint train/test split. Errors: no usable row (DataError naming the file), a task name that
    is an existing head's (unless cfg.replace_heads)."""
    from face_transfer.data.imageio import DataError
    from face_transfer.data.tasksets import read_task_set, resolve_names, tasks_of_set
    from face_transfer.evaluation.probes import ProbeConfig, split_indices
    out, taken = [], set()
    for ts in resolve_names(list(task_sets)):
        images, labels, meta, _ = read_task_set(ts, image_size=image_size)
        if len(images) < 10:
            raise DataError(f"{ts.path}: {len(images)} labelled image(s); expected at least 10 to fit and score a head")
        pcfg = ProbeConfig(seeds=(cfg.seed,), train_frac=1 - 2 * cfg.test_fraction, val_frac=cfg.test_fraction)
        groups = labels.get(meta["identity"]) if meta.get("identity") else None
        tr, va, te = split_indices(len(images), cfg.seed, pcfg, groups=groups)
        for task in tasks_of_set(ts.set_name, meta, taken_names=taken):
            taken.add(task.name)
            if task.kind == "verification":
                continue
            if task.name in existing_heads and not cfg.replace_heads:
                raise AdaptUsageError(f"task {task.name!r} of {ts.path} has the name of an existing head of the student "
                                 f"({sorted(existing_heads)}); pass --replace_heads to replace it, or rename the "
                                 "column in a task file")
            out.append(NewTaskData(task, images, labels, meta, np.concatenate([tr, va]), te, pcfg, cfg.seed))
    if not out:
        raise DataError(f"{', '.join(ts.path for ts in task_sets)}: no labelled column that a head can predict "
                        "(verification-only or none)")
    return out


def _encoded(nt: NewTaskData) -> dict:
    return {k: np.asarray(v) for k, v in nt.labels.items()}


def score_features(nt: NewTaskData, features: np.ndarray) -> float:
    """The new task's score (0-100, the probes' metric): the evaluation's linear probe (hyperparameters chosen
    on the validation part) on the same split as the heads, scored on the held-out test images. The same
    protocol for every mode and for the ceiling."""
    from face_transfer.evaluation.probes import probe_task
    return float(probe_task(nt.task, features, _encoded(nt), nt.seed, nt.probe_cfg)["score"])


def _fit_new_heads(new: list[NewTaskData], feats: dict[str, np.ndarray]) -> dict:
    from face_transfer.evaluation.heads import fit_heads
    heads = {}
    for nt in new:
        tr = nt.train
        fitted = fit_heads([nt.task.name], feats[nt.task.eval_set][tr],
                           {k: v[tr] for k, v in _encoded(nt).items()}, {nt.task.name: nt.task})
        for out_name, params in fitted.items():
            params["task"] = nt.task.name
            heads[out_name] = params
    return heads


def head_meta(nt: NewTaskData, params: dict) -> dict:
    """The analyser metadata of a new head: kind, class names, and the data it was fitted on."""
    from face_transfer.data.tasksets import SET_DOMAIN
    m = {"kind": params["kind"], "task": nt.task.name,
         "trained_on": {"dataset": nt.meta.get("name"), "path": nt.meta.get("path"), "images": int(len(nt.train)),
                        "domain": SET_DOMAIN, "synthetic": False}}
    if params["kind"] == "classification":
        names = nt.meta["columns"][nt.task.labels[0]].get("class_names")
        m["classes"] = [str(names[int(c)]) if names and int(c) < len(names) else str(c) for c in params["classes"]]
    if params["kind"] == "regression":
        m["outputs"] = list(params.get("outputs", []))
    return m


# ---- fine-tuning -------------------------------------------------------------------------------------

def _finetune(bundle: StudentBundle, new: list[NewTaskData], heads: dict, cfg: AdaptConfig, ckpt_dir: str | None,
              progress: bool = True, replay: np.ndarray | None = None):
    """Fine-tune a copy of the student on the new tasks' train images: the new heads (initialised from the
    linear fit) and the student together, batch norm statistics frozen, plus keep_weight x the mean squared
    standardised distance between its features and the frozen student's (Learning without Forgetting), on the
    batch and, when `replay` (faces of the run's own source) is given, on as many replayed faces."""
    import keras
    import tensorflow as tf

    from face_transfer.student.model import feature_model, stage_outputs
    student = keras.models.clone_model(bundle.student)
    student.set_weights(bundle.student.get_weights())
    ends = stage_outputs(student)
    if 0 < cfg.tune_stages < len(ends):  # layers are in graph order: everything up to the cut stays frozen
        cut = ends[len(ends) - cfg.tune_stages - 1]
        for layer in student.layers:
            layer.trainable = False
            if layer.name == cut:
                break
    for layer in student.layers:  # fine-tuning on a few thousand faces: keep the distillation's BN statistics
        if isinstance(layer, keras.layers.BatchNormalization) and cfg.freeze_batchnorm:
            layer.trainable = False
    feats_model = feature_model(student, bundle.view)
    frozen = bundle.features_model()
    # all new tasks' train images, pooled (one set per dataset), each with its heads' targets
    sets = {}
    for nt in new:
        sets.setdefault(nt.task.eval_set, nt)
    images = np.concatenate([sets[s].images[sets[s].train] for s in sets])
    set_of = np.concatenate([np.full(len(sets[s].train), i) for i, s in enumerate(sets)])
    names = list(heads)
    targets, masks, dense = {}, {}, {}
    ref = bundle.features(images)
    ref_scale = ref.std(0) + 1e-6
    for name in names:
        h = heads[name]
        nt = next(n for n in new if n.task.name == h["task"])
        col = nt.task.labels[0] if h["kind"] != "regression" else h["outputs"][0]
        y = np.zeros((len(images),) + np.shape(nt.labels[col])[1:], np.float32)
        m = set_of == list(sets).index(nt.task.eval_set)
        y[m] = np.asarray(nt.labels[col], np.float32)[nt.train]
        if h["kind"] == "classification":
            y = np.searchsorted(np.asarray(h["classes"]), y.astype(np.int64)).astype(np.int64)
        elif h["kind"] == "landmarks":
            y = (y.reshape(len(y), -1) - h["target_mean"]) / h["target_scale"]
        else:
            y = ((y.reshape(len(y), -1) - h["target_mean"]) / h["target_scale"]).astype(np.float32)
        finite = np.all(np.isfinite(np.reshape(y, (len(y), -1)).astype(np.float64)), axis=1) if y.dtype.kind == "f" else True
        targets[name], masks[name] = np.nan_to_num(y) if y.dtype.kind == "f" else y, (m & finite).astype(np.float32)
        coef = np.asarray(h["coef"], np.float32)
        if h["kind"] == "classification" and coef.shape[1] == 1:
            coef = np.concatenate([-coef / 2, coef / 2], 1)
            icpt = np.asarray([-h["intercept"][0] / 2, h["intercept"][0] / 2], np.float32)
        else:
            icpt = np.asarray(h["intercept"], np.float32).reshape(-1)
        layer = keras.layers.Dense(coef.shape[1], name=f"head_{name}")
        layer.build((None, coef.shape[0]))
        layer.set_weights([coef, icpt])
        dense[name] = (layer, tf.constant(h["mean"], tf.float32), tf.constant(h["scale"], tf.float32))
    head_vars = [v for layer, _, _ in dense.values() for v in layer.trainable_variables]
    opt_s = keras.optimizers.Adam(cfg.learning_rate)
    opt_h = keras.optimizers.Adam(cfg.head_learning_rate)
    opt_s.build(feats_model.trainable_variables)
    opt_h.build(head_vars)
    ref_scale_t = tf.constant(ref_scale, tf.float32)

    @tf.function(reduce_retracing=True)
    def step(x, ys, ms, xr):
        n = tf.shape(x)[0]
        xa = tf.concat([x, xr], 0)  # the keep term's images: the batch, then the replayed faces (maybe none)
        with tf.GradientTape() as tape:
            fa = feats_model(xa, training=not cfg.freeze_batchnorm)["features"]
            f = fa[:n]
            keep = tf.reduce_mean(tf.square((fa - frozen(xa, training=False)["features"]) / ref_scale_t))
            task_loss = 0.0
            for name, (layer, mu, sd) in dense.items():
                z = layer((f - mu) / sd)
                w = ms[name]
                if heads[name]["kind"] == "classification":
                    per = keras.losses.sparse_categorical_crossentropy(ys[name], z, from_logits=True)
                else:
                    per = tf.reduce_mean(tf.square(z - ys[name]), axis=-1)
                task_loss += tf.reduce_sum(per * w) / tf.maximum(tf.reduce_sum(w), 1.0)
            loss = task_loss + cfg.keep_weight * keep
        svars, hvars = feats_model.trainable_variables, head_vars
        grads = tape.gradient(loss, svars + hvars)
        opt_s.apply_gradients(zip(grads[:len(svars)], svars))
        opt_h.apply_gradients(zip(grads[len(svars):], hvars))
        return task_loss, keep

    start = 0
    state_path = os.path.join(ckpt_dir, "finetune_state.json") if ckpt_dir else None
    weights_path = os.path.join(ckpt_dir, "finetune.weights.npz") if ckpt_dir else None
    if state_path and os.path.exists(state_path) and os.path.exists(weights_path):
        start = int(read_json(state_path)["step"])
        with np.load(weights_path) as z:
            student.set_weights([z[f"s{i}"] for i in range(len(student.weights))])
            for i, v in enumerate(head_vars):
                v.assign(z[f"h{i}"])
    bar = None
    if progress and cfg.finetune_steps > start:
        import keras as _k
        bar = _k.utils.Progbar(cfg.finetune_steps, stateful_metrics=["task", "keep"], unit_name="step")
        bar.update(start)
    for s in range(start, cfg.finetune_steps):
        rng = np.random.default_rng([cfg.seed, 7, s])  # a function of the step: a resumed run sees the same batches
        idx = rng.integers(0, len(images), cfg.batch_size)
        x = images[idx]
        flip = rng.random(len(idx)) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        xr = replay[rng.integers(0, len(replay), cfg.batch_size)] if replay is not None and len(replay) else x[:0]
        tl, kl = step(tf.constant(x), {n: tf.constant(targets[n][idx]) for n in names},
                      {n: tf.constant(masks[n][idx]) for n in names}, tf.constant(xr))
        if bar is not None:
            bar.update(s + 1, values=[("task", float(tl)), ("keep", float(kl))])
        if ckpt_dir and ((s + 1) % cfg.checkpoint_every == 0 or s + 1 == cfg.finetune_steps):
            from face_transfer.core.fileio import save_npz
            save_npz(weights_path, **{f"s{i}": w for i, w in enumerate(student.get_weights())},
                     **{f"h{i}": v.numpy() for i, v in enumerate(head_vars)})
            write_json(state_path, {"step": s + 1})
    new_heads = {}
    for name, (layer, _, _) in dense.items():
        k, b = layer.get_weights()
        h = dict(heads[name])
        h.update(coef=k.astype(np.float32), intercept=b.astype(np.float32))
        new_heads[name] = h
    return student, new_heads


# ---- old heads: their tasks before and after a fine-tune ----------------------------------------------------

def run_data(bundle: StudentBundle):
    """(run, {task: Task}, images, labels) of the run the bundle came from; None without one."""
    if bundle.run_dir is None:
        return None
    from face_transfer.configs import ExperimentConfig
    from face_transfer.stages import inputs
    from face_transfer.stages.rundir import Run
    run = Run(bundle.run_dir, ExperimentConfig.from_dict(read_json(RunPaths(bundle.run_dir).config_json)))
    images, labels = inputs.load_eval_data(run)
    return run, {t.name: t for t in inputs.run_tasks(run)}, images, labels


def replay_faces(run, n: int) -> np.ndarray:
    """`n` faces of the run's own unlabelled source (SynthFaces, the user's faces or their mix, in the
    distillation's domain), from a stream of their own: not the evaluation sets the old heads are scored on."""
    from face_transfer.stages import inputs
    return inputs.image_source(run, "distill").images(0, n, stream="adapt_replay")


def old_task_scores(bundle: StudentBundle, data, features_fn) -> dict[str, float]:
    """{task of an old head: score} with the features `features_fn(images)`: the run's own evaluation protocol
    (a linear probe per seed, hyperparameters on the validation split, scored on the held-out test split, mean
    over the run's probe seeds), so that before and after compare like the transfer table does."""
    from face_transfer.evaluation.probes import evaluate_representation
    run, tasks, images, labels = data
    names = {p.get("task") or bundle.heads_meta.get(h, {}).get("task") for h, p in bundle.heads.items()}
    todo = [tasks[n] for n in sorted(n for n in names if n in tasks) if tasks[n].eval_set in images]
    feats = {s: features_fn(images[s]) for s in {t.eval_set for t in todo}}
    res = evaluate_representation(feats, {s: labels[s] for s in feats}, todo, run.cfg.probe)
    return {k: float(v["score_mean"]) for k, v in res.items()}


def refit_old_heads(bundle: StudentBundle, data, student) -> dict:
    """The old heads fitted again, as the export stage fits them, on `student`'s features of the run's data."""
    from face_transfer.stages.export import analyzer_heads
    run, _, images, labels = data
    tuned = StudentBundle(student, bundle.view, {}, {}, bundle.path)
    heads, _ = analyzer_heads(run, {s: tuned.features(x) for s, x in images.items()}, labels)
    return {k: v for k, v in heads.items() if k in bundle.heads}


# ---- the whole adaptation ---------------------------------------------------------------------------------

@dataclasses.dataclass
class AdaptResult:
    """What `adapt` returns: the student (fine-tuned or the original), every head, and the measurements."""
    student: object
    view: str
    heads: dict
    heads_meta: dict
    scores: dict  # {"new": {task: {"linear": .., "finetune": ..}}, "old_before": {task: ..}, "old_after": {task: ..}}
    seconds: float
    mode: str
    new_tasks: list = dataclasses.field(default_factory=list)  # [NewTaskData]: the data and splits used

    @property
    def forgetting_max(self) -> float | None:
        before, after = self.scores.get("old_before", {}), self.scores.get("old_after", {})
        drops = [before[k] - after[k] for k in before if k in after]
        return max(drops) if drops else None


def adapt(bundle: StudentBundle, task_sets, cfg: AdaptConfig = AdaptConfig(), ckpt_dir: str | None = None,
          progress: bool = True, measure_forgetting: bool = True) -> AdaptResult:
    """New heads for the tasks of `task_sets` on `bundle`'s student (see the module docstring)."""
    t0 = time.time()
    new = read_new_tasks(task_sets, bundle.image_size, cfg, existing_heads=set(bundle.heads))
    sets = {}
    for nt in new:
        sets.setdefault(nt.task.eval_set, nt)
    feats = {s: bundle.features(nt.images) for s, nt in sets.items()}
    heads = _fit_new_heads(new, feats)
    scores: dict = {"new": {nt.task.name: {"linear": score_features(nt, feats[nt.task.eval_set])} for nt in new}}
    student = bundle.student
    old_heads = dict(bundle.heads)
    if cfg.mode == "finetune" and cfg.finetune_steps > 0:
        data = run_data(bundle)  # the old heads' own data, when the run is at hand
        if data is not None and measure_forgetting:
            scores["old_before"] = old_task_scores(bundle, data, bundle.features)
        replay = replay_faces(data[0], cfg.replay_faces) if data is not None and cfg.replay_faces > 0 else None
        student, heads = _finetune(bundle, new, heads, cfg, ckpt_dir, progress, replay)
        tuned = StudentBundle(student, bundle.view, {}, {}, bundle.path)
        feats = {s: tuned.features(nt.images) for s, nt in sets.items()}
        for nt in new:
            scores["new"][nt.task.name]["finetune"] = score_features(nt, feats[nt.task.eval_set])
        if data is not None:
            if measure_forgetting:
                scores["old_after"] = old_task_scores(bundle, data, tuned.features)
            # the features moved (a little, the LwF term sees to it): the old heads follow them
            old_heads.update(refit_old_heads(bundle, data, student))
    all_heads = {k: v for k, v in old_heads.items() if k not in heads}
    all_meta = {k: v for k, v in bundle.heads_meta.items() if k not in heads}
    for name, params in heads.items():
        all_heads[name] = params
        all_meta[name] = head_meta(next(n for n in new if n.task.name == params["task"]), params)
    return AdaptResult(student, bundle.view, all_heads, all_meta, scores, time.time() - t0, cfg.mode, new)


def ceiling_score(nt: NewTaskData, student_cfg, steps: int, batch_size: int = 32, learning_rate: float = 1e-3,
                  seed: int = 0) -> float:
    """The same architecture trained from nothing on the task's train images (softmax or MSE head on its
    features), then scored like the other modes: what the labels alone give."""
    import keras
    import tensorflow as tf

    from face_transfer.student.model import build_student, feature_model
    keras.utils.set_random_seed(seed)
    net = build_student(student_cfg)
    fm = feature_model(net, "ladder")
    task = nt.task
    y = np.asarray(nt.labels[task.labels[0]])[nt.train]
    if task.kind == "classification":
        classes, y = np.unique(y, return_inverse=True)
        head = keras.layers.Dense(len(classes))
    else:
        y = np.asarray(y, np.float32).reshape(len(y), -1)
        y = (y - np.nanmean(y, 0)) / (np.nanstd(y, 0) + 1e-6)
        head = keras.layers.Dense(y.shape[1])
    x_all = nt.images[nt.train]
    head.build((None, fm.output["features"].shape[-1]))
    variables = fm.trainable_variables + head.trainable_variables
    opt = keras.optimizers.Adam(learning_rate)
    opt.build(variables)

    @tf.function(reduce_retracing=True)
    def step(x, t):
        with tf.GradientTape() as tape:
            z = head(fm(x, training=True)["features"])
            if task.kind == "classification":
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(t, z, from_logits=True))
            else:
                ok = tf.cast(tf.math.is_finite(t), tf.float32)
                loss = tf.reduce_sum(tf.square(tf.where(ok > 0, z - t, 0.0))) / tf.maximum(tf.reduce_sum(ok), 1.0)
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.integers(0, len(x_all), batch_size)
        x = x_all[idx]
        flip = rng.random(len(idx)) < 0.5
        x = np.where(flip[:, None, None, None], x[:, :, ::-1], x)
        step(tf.constant(x), tf.constant(y[idx]))
    feats = np.asarray(fm.predict(nt.images, batch_size=256, verbose=0)["features"], np.float32)
    return score_features(nt, feats)


# ---- the adapted analyser's files ----------------------------------------------------------------------

def export_analyzer(result: AdaptResult, out_dir: str, calibration_images: np.ndarray, parity_images: np.ndarray,
                    min_cosine: float | None = None, web_page: bool = True) -> dict:
    """The analyser of `result` into `out_dir`: analyzer_savedmodel/, analyzer_int8.tflite (+ .labels.json and
    TFLite metadata naming every head, its classes and the data it was fitted on), analyzer.onnx (checked with
    onnxruntime), the student bundle (so the folder can be adapted again) and, when LiteRT.js is installed, the
    browser page. Returns {file: size} and the parity figures."""
    from face_transfer import __version__
    from face_transfer.deploy import metadata, onnx_export, savedmodel, tflite
    from face_transfer.student.model import feature_model
    if min_cosine is None:  # the export stage's own bar for the int8 analyser's outputs
        from face_transfer.configs import ExportConfig
        min_cosine = ExportConfig().min_cosine_analyzer
    os.makedirs(out_dir, exist_ok=True)
    paths = ExportPaths(out_dir)
    heads = {k: {kk: vv for kk, vv in v.items() if kk != "task"} for k, v in result.heads.items()}
    analyzer = savedmodel.build_analyzer(result.student, heads, features=feature_model(result.student, result.view))
    sm_dir = paths.savedmodel_dir("analyzer")
    savedmodel.export_savedmodel(analyzer, sm_dir, overwrite=True)
    meta = result.heads_meta
    for path in (paths.heads_json, paths.analyzer_labels_json):
        write_json(path, meta)
    data = tflite.convert_to_tflite(sm_dir, tflite.QuantizationConfig.for_int8(calibration_images,
                                                                               steps=len(calibration_images)))
    code_dim = int(result.student.outputs[0].shape[-1])
    outputs = analyzer_outputs_metadata(meta, code_dim)
    outputs = {k: v for k, v in outputs.items() if k in savedmodel.model_output_names(analyzer)}
    data = metadata.write_metadata(
        data, name="face-transfer facial analyser (adapted, int8_ptq)",
        description=(f"Multi-task facial analyser: the distilled student ({result.mode} adaptation) plus "
                     f"{len(meta)} linear heads. Input: RGB uint8 [N,S,S,3], raw pixels 0..255."),
        outputs=outputs, version=f"face-transfer {__version__}", color_space="RGB", mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0), value_range=(0, 255),
        extra={"model": "analyzer", "mode": "int8_ptq", "adapt": {"mode": result.mode,
                                                                  "heads_trained_on": {k: v.get("trained_on")
                                                                                       for k, v in meta.items()}}})

    def ref(x):
        return {k: np.asarray(v) for k, v in analyzer.predict(x, verbose=0).items()}
    report = {"analyzer_int8_ptq": tflite.validate_tflite(data, ref, parity_images, min_cosine=min_cosine)}
    from face_transfer.core.fileio import write_bytes
    write_bytes(paths.analyzer_tflite, data)
    conv = onnx_export.export_onnx(sm_dir, paths.onnx_file("analyzer"))
    report["analyzer_onnx"] = onnx_export.validate_onnx(conv["path"], ref, parity_images)
    save_bundle(out_dir, result.student, result.view, result.heads, meta, extra={"adapted": result.mode})
    page = None
    if web_page:
        from face_transfer.deploy import web
        ok, reason = web.web_status()
        page = web.build_web_page(out_dir)["dir"] if ok else f"not built: {reason}"
    files = {os.path.basename(p): os.path.getsize(p) for p in (paths.analyzer_tflite, paths.onnx_file("analyzer"))}
    return {"files": files, "cosine": {k: v["cosine_mean"] for k, v in report.items()
                                       if isinstance(v, dict) and "cosine_mean" in v}, "web": page}


def calibration_faces(new: list[NewTaskData], n: int = 128) -> np.ndarray:
    """Faces for the int8 calibration and parity sets: the new tasks' own training images (the photos the
    analyser is for), evenly spread."""
    pool = np.concatenate([nt.images[nt.train] for nt in {id(nt.images): nt for nt in new}.values()])
    idx = np.linspace(0, len(pool) - 1, min(n, len(pool))).astype(int)
    return pool[idx]


# ---- one adaptation into its own folder (what face-transfer-adapt and the Python API run) ----------------------

def check_out_dir(out_dir: str, source: str) -> str:
    """The output folder, refused when empty, equal to or inside the source (run directory or student folder)."""
    if not out_dir or not str(out_dir).strip():
        raise AdaptUsageError("--out is empty; expected a new folder for the adapted analyser")
    out = os.path.abspath(out_dir)
    src = os.path.abspath(source)
    parent = os.path.dirname(src)
    src_run = src if os.path.exists(RunPaths(src).config_json) else \
        (parent if os.path.exists(RunPaths(parent).config_json) else src)
    for s in {src, src_run}:
        if out == s or out.startswith(s + os.sep):
            raise AdaptUsageError(f"--out={out_dir} is (inside) the source {s}; the original run's files are never "
                             "changed: choose a new folder")
    return out


def run_adapt(source: str, task_sets, out_dir: str, cfg: AdaptConfig = AdaptConfig(), overwrite: bool = False,
              progress: bool = True, ceiling_steps: int = 0) -> dict:
    """Adapt the student of `source` (a run directory or a student folder) to `task_sets` and export the new
    analyser into `out_dir`, under an exclusive lock; returns the record written to `<out_dir>/adapt.json`.

    Resumable: a complete, verified `adapt.json` of the same inputs is returned as is; an interrupted
    fine-tune resumes from its checkpoint (`ckpt/`). A folder holding another adaptation is refused unless
    `overwrite`. `ceiling_steps` > 0 also trains the student's architecture from nothing on each new task
    (the ceiling the scores are compared with)."""
    import shutil

    from face_transfer.integrity import digest_artifacts, notice, verify_artifacts
    from face_transfer.stages.rundir import RunLock
    out = check_out_dir(out_dir, source)
    bundle = load_bundle(source)
    want = {"source": os.path.abspath(source), "tasks": [dataclasses.asdict(t) for t in task_sets],
            "config": dataclasses.asdict(cfg), "ceiling_steps": int(ceiling_steps)}
    want = json.loads(json.dumps(want, default=str))
    with RunLock(out):
        paths = ExportPaths(out)
        rec_path, spec_path, lock = paths.adapt_json, paths.adapt_spec_json, RunPaths(out).lock
        if os.path.exists(spec_path) and read_json(spec_path) != want:
            if not overwrite:
                raise AdaptUsageError(f"{out} holds another adaptation ({spec_path} differs); pass --overwrite to replace "
                                 "it, or choose another --out")
        elif not os.path.exists(spec_path) and [e for e in os.listdir(out) if os.path.join(out, e) != lock] and not overwrite:
            raise AdaptUsageError(f"--out={out_dir} exists and is not empty; choose a new folder or pass --overwrite")
        if overwrite and (not os.path.exists(spec_path) or read_json(spec_path) != want):
            for e in os.listdir(out):
                p = os.path.join(out, e)
                if p != lock:
                    shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
        if os.path.exists(rec_path):
            rec = read_json(rec_path)
            bad = verify_artifacts(out, rec.get("artifacts", {}))
            if not bad:
                notice(f"{out}: adaptation complete, artifacts verified ({rec_path}); nothing to do")
                return rec
            notice(f"{out}: {bad[0][0]} {bad[0][1]}; redoing the adaptation")
            os.remove(rec_path)
        write_json(spec_path, want)
        result = adapt(bundle, task_sets, cfg, ckpt_dir=paths.checkpoint_dir, progress=progress)
        new = result.new_tasks
        if ceiling_steps > 0:
            from face_transfer.student.model import infer_config
            scfg = infer_config(bundle.student)
            for nt in new:
                result.scores["new"][nt.task.name]["ceiling"] = ceiling_score(nt, scfg, ceiling_steps, cfg.batch_size)
        faces = calibration_faces(new)
        files = export_analyzer(result, out, faces, faces[::-1][:64])
        record = {"source": os.path.abspath(source), "mode": cfg.mode, "config": dataclasses.asdict(cfg),
                  "scores": result.scores, "forgetting_max": result.forgetting_max,
                  "seconds_adapt": round(result.seconds, 1),
                  "new_heads": sorted(h for h, p in result.heads.items() if p.get("task") in {nt.task.name for nt in new}),
                  "heads": sorted(result.heads), **files}
        unrecorded = {rec_path, lock, paths.checkpoint_dir, paths.web_dir}
        record["artifacts"] = digest_artifacts(out, [p for p in (os.path.join(out, f) for f in os.listdir(out))
                                                     if p not in unrecorded])
        write_json(rec_path, record)
        return record


def summary_lines(record: dict, out_dir: str) -> str:
    """What face-transfer-adapt prints at the end: each new task's scores, the old heads' largest drop, files."""
    lines = [f"adapted ({record['mode']}) in {record['seconds_adapt']:.0f} s -> {out_dir}"]
    for task, s in record["scores"]["new"].items():
        lines.append(f"  new head {task}: test score " + ", ".join(f"{k} {v:.1f}" for k, v in s.items()))
    if record.get("forgetting_max") is not None:
        lines.append(f"  old heads' tasks: largest drop {record['forgetting_max']:+.2f} points "
                     f"({len(record['scores'].get('old_after', {}))} tasks, the run's probes on their test split; "
                     "the old heads were refitted on the fine-tuned features)")
    elif record["mode"] == "finetune":
        lines.append("  old heads: not scored (their data is not at hand: adapt from the run directory to measure it)")
    tfl = ExportPaths(out_dir).analyzer_tflite
    lines.append(f"  analyser: {tfl} ({len(record['heads'])} heads); "
                 f"try: face-transfer-infer --model={tfl} --images=photos/")
    return "\n".join(lines)
