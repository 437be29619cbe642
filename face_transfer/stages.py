"""The pipeline's stages over one run directory: data -> teachers -> cache -> fusion -> student ->
evaluation -> export -> report. Each stage skips when its outputs are complete and resumes otherwise.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np

from face_transfer.configs import ExperimentConfig
from face_transfer.data import synth
from face_transfer.data.pipelines import load_eval_set, render_eval_set
from face_transfer.data.tasks import EVAL_SETS, TASKS

CONFIG_JSON = "config.json"


def header(title: str):
    print(f"\n=== {title} " + "=" * max(3, 70 - len(title)), file=sys.stderr, flush=True)


def summary(line: str):
    print(f"  -> {line}", file=sys.stderr, flush=True)


def _write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f, indent=1, default=_json_default)
    os.replace(path + ".tmp", path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def _read_json(path):
    with open(path) as f:
        return json.load(f)


class Run:
    """A run directory and its config; every path the stages use is named here."""

    def __init__(self, run_dir: str, cfg: ExperimentConfig):
        self.dir, self.cfg = run_dir, cfg

    def p(self, *parts) -> str:
        return os.path.join(self.dir, *parts)

    @classmethod
    def open(cls, run_dir: str, cfg: ExperimentConfig, overwrite: bool = False, flags_text: str = ""):
        """Create or resume a run. A run dir made with a different config is never silently reused."""
        path = os.path.join(run_dir, CONFIG_JSON)
        if os.path.exists(path):
            have = ExperimentConfig.from_json(open(path).read())
            if have != cfg and not overwrite:
                raise ValueError(f"{run_dir} holds a run with a different configuration ({path}); pass "
                                 "--overwrite to replace it, or use another --run_dir")
            if overwrite:
                import shutil
                shutil.rmtree(run_dir)
        os.makedirs(run_dir, exist_ok=True)
        if not os.access(run_dir, os.W_OK):
            raise PermissionError(f"--run_dir={run_dir} is not writable")
        with open(path + ".tmp", "w") as f:
            f.write(cfg.to_json())
        os.replace(path + ".tmp", path)
        if flags_text:
            with open(os.path.join(run_dir, "flags.txt"), "w") as f:
                f.write(flags_text)
        return cls(run_dir, cfg)

    def stage_done(self, name) -> dict | None:
        path = self.p("metrics", "stages", f"{name}.json")
        return _read_json(path) if os.path.exists(path) else None

    def mark_done(self, name, info: dict):
        _write_json(self.p("metrics", "stages", f"{name}.json"), {**info, "finished": time.time()})


# ---- data --------------------------------------------------------------------------------------------

def stage_data(run: Run) -> dict:
    header("data: synthetic faces (eval sets, sample grid, statistics)")
    t0 = time.time()
    scfg = run.cfg.data.synth
    for name in EVAL_SETS:
        render_eval_set(scfg, name, run.cfg.data.eval_set_size, run.p("data", name))
    grid = run.p("data", "sample_grid.png")
    if not os.path.exists(grid):
        synth.save_sample_grid(grid, scfg)
    stats_path = run.p("data", "stats.json")
    if not os.path.exists(stats_path):
        _write_json(stats_path, factor_statistics(run))
    info = {"seconds": round(time.time() - t0, 1), "eval_sets": list(EVAL_SETS),
            "images_per_set": run.cfg.data.eval_set_size}
    summary(f"{len(EVAL_SETS)} eval sets x {run.cfg.data.eval_set_size} faces, grid {grid} "
            f"({info['seconds']} s)")
    return info


def factor_statistics(run: Run) -> dict:
    """Per-factor statistics of the photo eval set (class frequencies, ranges): what the data holds."""
    _, labels = load_eval_set(run.p("data", "photo"))
    stats = {}
    for k, v in labels.items():
        v = np.asarray(v)
        if v.ndim > 1:
            stats[k] = {"shape": list(v.shape[1:]), "mean": v.reshape(len(v), -1).mean(0).round(4).tolist()}
        elif np.issubdtype(v.dtype, np.integer) and k != "identity":
            vals, counts = np.unique(v, return_counts=True)
            stats[k] = {"counts": {str(a): int(b) for a, b in zip(vals, counts)}}
        elif k == "identity":
            stats[k] = {"distinct": int(len(np.unique(v))), "n": int(len(v))}
        else:
            stats[k] = {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()),
                        "max": float(v.max())}
    return stats


def load_eval_data(run: Run):
    images, labels = {}, {}
    for name in EVAL_SETS:
        images[name], labels[name] = load_eval_set(run.p("data", name))
    return images, labels


# ---- teachers -------------------------------------------------------------------------------------------

def stage_teachers(run: Run, strategy=None) -> dict:
    from face_transfer.teachers.train import train_teacher
    header(f"teachers: train the zoo ({len(run.cfg.teachers)} source-task teachers)"
           + (f" + import {', '.join(run.cfg.real_teachers)}" if run.cfg.real_teachers else ""))
    records = {}
    for spec in run.cfg.teachers:
        t0 = time.time()
        print(f"  teacher {spec.name} ({spec.arch}, source task {spec.source_task})", file=sys.stderr)
        rec = train_teacher(spec, run.cfg.data.synth, run.cfg.teacher_train, run.p("teachers", spec.name), strategy)
        records[spec.name] = rec
        summary(f"{spec.name}: {rec['params_total']:,} params, {rec['metrics']} ({time.time() - t0:.0f} s)")
    for name, rec in _real_teacher_records(run).items():
        records[name] = rec
        summary(f"{name} (imported, {rec['source_task']}): {rec['params_embedding']:,} params, {rec['embedding_dim']}-d")
    return records


def _real_teacher_records(run: Run) -> dict:
    """What the report says about each imported teacher (written once into teachers/<name>/teacher.json)."""
    from face_transfer.teachers.real import load_real_teacher
    out = {}
    for name in run.cfg.real_teachers:
        path = run.p("teachers", name, "teacher.json")
        if not os.path.exists(path):
            t = load_real_teacher(name)
            fm = t.feature_model
            _write_json(path, {"name": name, "arch": "imported", "source_task": t.metadata.get("task", "?"),
                               "input_spec": dataclasses.asdict(t.spec), "embedding_dim": t.dim,
                               "params_embedding": int(fm.count_params()) if fm is not None else 0,
                               "params_total": int(fm.count_params()) if fm is not None else 0,
                               "metrics": {}, "metadata": {k: str(v) for k, v in t.metadata.items()}})
        out[name] = _read_json(path)
    return out


def load_teachers(run: Run):
    """Every frozen teacher of the run: the trained zoo, then the imported real models."""
    from face_transfer.teachers.real import load_real_teacher
    from face_transfer.teachers.train import load_zoo_teacher
    return [load_zoo_teacher(run.p("teachers", s.name)) for s in run.cfg.teachers] + \
        [load_real_teacher(n) for n in run.cfg.real_teachers]


def teacher_names(run: Run) -> list[str]:
    return [s.name for s in run.cfg.teachers] + list(run.cfg.real_teachers)


# ---- embedding cache -------------------------------------------------------------------------------------

def stage_cache(run: Run, teachers) -> dict:
    from face_transfer.teachers.cache import build_embedding_cache
    header(f"embedding cache: {run.cfg.data.cache_size} unlabelled faces through every teacher")
    scfg, dom = run.cfg.data.synth, run.cfg.data.cache_domain

    def image_fn(idx):
        return synth.render_faces(scfg, idx, stream="fusion", pool="train", domain=dom)[0]

    manifest = build_embedding_cache(teachers, image_fn, run.cfg.data.cache_size, run.p("cache"),
                                     meta={"synth": dataclasses.asdict(scfg), "stream": "fusion", "domain": dom})
    rate = manifest.get("images_per_s")
    summary(f"dims {manifest['dims']}" + (f", {rate:,.0f} images/s" if rate else " (already complete)"))
    return manifest


# ---- fusion ----------------------------------------------------------------------------------------------

def stage_fusion(run: Run) -> dict:
    from face_transfer.fusion.autoencoder import train_fusion
    from face_transfer.teachers.cache import load_embedding_cache
    header(f"fusion: auto-encoder to a {run.cfg.fusion.code_dim}-d common embedding")
    _, embs = load_embedding_cache(run.p("cache"))
    t0 = time.time()
    fusion = train_fusion(embs, run.cfg.fusion, run.p("fusion"))
    rec = fusion.record
    summary(f"concat {rec['concat_dim']} -> code {rec['code_dim']} (x{rec['compression_ratio']:.1f}), "
            f"val R2 per teacher {({k: round(v, 3) for k, v in rec['val_r2_per_teacher'].items()})} "
            f"({time.time() - t0:.0f} s)")
    return rec


# ---- representations (features of the eval sets) ------------------------------------------------------------

def _features_cached(run: Run, rep: str, compute):
    """{eval_set: features} for one representation, cached as .npy files under features/."""
    out = {}
    for name in EVAL_SETS:
        path = run.p("features", rep, f"{name}.npy")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            feats = np.asarray(compute(name), np.float32)
            if not np.all(np.isfinite(feats)):
                raise FloatingPointError(f"representation {rep!r} has NaN/Inf features on eval set {name}")
            np.save(path + ".tmp.npy", feats)
            os.replace(path + ".tmp.npy", path)
        out[name] = np.load(path)
    return out


def pixel_features(images: np.ndarray, size: int = 16) -> np.ndarray:
    """The floor: raw pixels, area-downsampled to size x size x 3, in [0, 1]."""
    n, s = images.shape[0], images.shape[1]
    f = s // size
    x = images[:, :f * size, :f * size].astype(np.float32).reshape(n, size, f, size, f, 3).mean((2, 4))
    return (x / 255.0).reshape(n, -1)


def _predict(model, images, batch=256):
    return np.asarray(model.predict(images, batch_size=batch, verbose=0), np.float32)


def teacher_reps(run: Run, teachers, images) -> dict:
    """pixels, random student, each teacher, concat, PCA, random projection and AE code at d."""
    from face_transfer.fusion.autoencoder import Fusion, fit_pca, random_projection, train_fusion
    from face_transfer.student.model import build_student
    from face_transfer.teachers.cache import load_embedding_cache
    import keras

    reps = {"pixels": _features_cached(run, "pixels", lambda s: pixel_features(images[s]))}

    def random_student(s):
        keras.utils.set_random_seed(run.cfg.seed + 12345)
        return _predict(build_student(run.cfg.student, name="random_student"), images[s])
    reps["random_student"] = _features_cached(run, "random_student", random_student)
    per_teacher = {}
    for t in teachers:
        per_teacher[t.name] = _features_cached(run, f"teacher__{t.name}", lambda s, t=t: t.embed(images[s]))
        reps[t.name] = per_teacher[t.name]
    fusion = Fusion.load(run.p("fusion"))
    std = fusion.standardizer
    concat = {s: std.concat({k: per_teacher[k][s] for k in std.teachers}) for s in EVAL_SETS}
    reps["concat"] = concat
    d = fusion.code_dim
    _, cache = load_embedding_cache(run.p("cache"))
    cache_concat = std.concat(cache)
    pca = fit_pca(cache_concat, d, run.cfg.seed)
    rp = random_projection(cache_concat.shape[1], d, run.cfg.seed)
    reps["pca"] = _features_cached(run, f"pca_d{d}", lambda s: pca(concat[s]))
    reps["random_projection"] = _features_cached(run, f"rp_d{d}", lambda s: rp(concat[s]))
    reps["ae"] = _features_cached(run, f"ae_d{d}", lambda s: fusion.encoder.predict(concat[s], verbose=0))
    # the other standardisation (z-score vs isotropic PHI-S), same d and AE, for the comparison
    other = "phi_s" if run.cfg.fusion.standardize == "zscore" else "zscore"
    alt = train_fusion(cache, dataclasses.replace(run.cfg.fusion, standardize=other), run.p(f"fusion_{other}"))
    alt_concat = {s: alt.standardizer.concat({k: per_teacher[k][s] for k in alt.standardizer.teachers})
                  for s in EVAL_SETS}
    reps[f"ae_{other}"] = _features_cached(run, f"ae_{other}_d{d}",
                                           lambda s: alt.encoder.predict(alt_concat[s], verbose=0))
    return reps


# ---- compression curve ----------------------------------------------------------------------------------------

def stage_compression_curve(run: Run, reps: dict, labels: dict) -> dict:
    """Mean novel-task score of AE / PCA / random projection codes vs code dim d, against concat."""
    from face_transfer.data.tasks import novel_tasks
    from face_transfer.evaluation.probes import evaluate_representation, group_means
    from face_transfer.fusion.autoencoder import Fusion, fit_pca, random_projection, train_fusion
    from face_transfer.teachers.cache import load_embedding_cache
    path = run.p("metrics", "compression_curve.json")
    if os.path.exists(path):
        return _read_json(path)
    header(f"compression curve: d in {list(run.cfg.compression_dims)} (AE vs PCA vs random projection)")
    tasks = novel_tasks()
    _, cache = load_embedding_cache(run.p("cache"))
    std = Fusion.load(run.p("fusion")).standardizer
    cache_concat = std.concat(cache)
    concat = reps["concat"]
    probe = run.cfg.probe

    def score(feats):
        res = evaluate_representation(feats, labels, tasks, probe)
        g = group_means(res, tasks)
        return g["mean_novel"], g["std_novel"]

    curve = {"d": [], "ae": [], "pca": [], "random_projection": [], "ae_std": [], "pca_std": [],
             "random_projection_std": []}
    c, cs = score(concat)
    curve.update({"concat": c, "concat_std": cs, "concat_dim": int(cache_concat.shape[1])})
    for d in run.cfg.compression_dims:
        if d >= cache_concat.shape[1]:
            continue
        t0 = time.time()
        fcfg = dataclasses.replace(run.cfg.fusion, code_dim=d)
        fus = train_fusion(cache, fcfg, run.p("fusion_curve", f"d{d}"))
        pca = fit_pca(cache_concat, d, run.cfg.seed)
        rp = random_projection(cache_concat.shape[1], d, run.cfg.seed)
        for name, fn in (("ae", lambda z: fus.encoder.predict(z, verbose=0)), ("pca", pca), ("random_projection", rp)):
            m, s = score(_features_cached(run, f"{name}_d{d}", lambda st, fn=fn: fn(concat[st])))
            curve[name].append(m)
            curve[f"{name}_std"].append(s)
        curve["d"].append(int(d))
        summary(f"d={d}: AE {curve['ae'][-1]:.1f}  PCA {curve['pca'][-1]:.1f}  RP {curve['random_projection'][-1]:.1f}"
                f"  (concat {c:.1f}; {time.time() - t0:.0f} s)")
    _write_json(path, curve)
    return curve


def compression_summary(curve: dict, keep: float = 0.99) -> dict:
    """Smallest d (largest ratio) whose AE code keeps `keep` of the concatenation's novel score."""
    best = None
    for d, a, p in zip(curve["d"], curve["ae"], curve["pca"]):
        if a >= keep * curve["concat"]:
            if best is None or d < best["d"]:
                best = {"d": d, "ratio": curve["concat_dim"] / d, "ae": a, "pca": p}
    return best or {"d": None, "ratio": None, "note": f"no tested d keeps {keep:.0%} of concat"}


# ---- student ----------------------------------------------------------------------------------------------------

def _fused_teacher_fns(run: Run):
    """Builders (called inside the strategy scope) for the in-graph distillation targets."""
    import keras
    from face_transfer.fusion.autoencoder import Fusion, build_fused_teacher
    from face_transfer.teachers.cache import build_ensemble

    size = run.cfg.data.synth.image_size

    def ensemble():
        return build_ensemble(load_teachers(run), image_size=size)

    def code_model():
        return build_fused_teacher(ensemble(), Fusion.load(run.p("fusion")))

    def concat_model():
        fusion = Fusion.load(run.p("fusion"))
        ens = ensemble()
        from keras import ops
        embs = ens(ens.input)
        blocks = [ops.matmul(embs[k] - fusion.standardizer.means[k], fusion.standardizer.mats[k])
                  for k in fusion.standardizer.teachers]
        m = keras.Model(ens.input, ops.concatenate(blocks, -1), name="teacher_concat")
        m.trainable = False
        return m

    def decoder():
        return Fusion.load(run.p("fusion")).decoder

    return code_model, concat_model, decoder


def student_dirs(run: Run) -> dict:
    """{representation name: directory} of every student variant this config trains."""
    out = {"student": run.p("student")}
    for loss in run.cfg.loss_comparison:
        if loss != run.cfg.distill.loss:
            out[f"student_{loss}"] = run.p(f"student_{loss}")
    if run.cfg.supervised_control:
        out["supervised_student"] = run.p("student_supervised")
    return out


def stage_student(run: Run, strategy=None) -> dict:
    from face_transfer.fusion.autoencoder import Fusion
    from face_transfer.student.distill import distill_student, train_supervised_student
    cfg = run.cfg
    header(f"student: distil the fused teacher into a {cfg.student.arch} (width {cfg.student.width}, "
           f"{cfg.distill.steps} steps, loss {cfg.distill.loss})")
    dims = Fusion.load(run.p("fusion")).standardizer.dims
    code_fn, concat_fn, dec_fn = _fused_teacher_fns(run)
    scfg = dataclasses.replace(cfg.student, embedding_dim=cfg.fusion.code_dim)
    records = {}
    for rep, out_dir in student_dirs(run).items():
        t0 = time.time()
        if rep == "supervised_student":
            print("  control: the same student trained on all source-task labels (multi-task supervised)",
                  file=sys.stderr)
            rec = train_supervised_student(scfg, cfg.distill, cfg.data.synth, out_dir, strategy)
        else:
            dcfg = cfg.distill if rep == "student" else dataclasses.replace(cfg.distill, loss=rep[len("student_"):])
            if rep != "student":
                print(f"  loss comparison: {dcfg.loss}", file=sys.stderr)
            rec = distill_student(scfg, dcfg, cfg.data.synth, code_fn, out_dir, strategy,
                                  decoder_fn=dec_fn, dims=dims, target_concat_fn=concat_fn)
        records[rep] = rec
        summary(f"{rep}: {rec['params']:,} params, {rec['mflops']:.1f} MFLOPs, final loss {rec['final_loss']} "
                f"({time.time() - t0:.0f} s)")
    return records


# ---- evaluation -------------------------------------------------------------------------------------------------

def all_reps(run: Run, teachers, images) -> dict:
    """Every representation the config defines, as {rep: {eval_set: features}}."""
    from face_transfer.student.distill import load_student
    reps = teacher_reps(run, teachers, images)
    for rep, d in student_dirs(run).items():
        if os.path.exists(os.path.join(d, "student.json")):
            model = load_student(d)
            reps[rep] = _features_cached(run, rep, lambda s, m=model: _predict(m, images[s]))
    return reps


def rep_groups(run: Run, results: dict, tasks) -> dict:
    """Group means per representation, plus `best_teacher` (the best single teacher per group)."""
    from face_transfer.evaluation.probes import group_means
    groups = {rep: group_means(res, tasks) for rep, res in results.items()}
    names = teacher_names(run)
    for g in ("novel", "source", "all"):
        best = max(names, key=lambda n: groups[n][f"mean_{g}"])
        groups.setdefault("best_teacher", {})[f"mean_{g}"] = groups[best][f"mean_{g}"]
        groups["best_teacher"][f"std_{g}"] = groups[best][f"std_{g}"]
        groups["best_teacher"][f"which_{g}"] = best
    return groups


def stage_evaluate(run: Run, teachers=None) -> dict:
    from face_transfer.data.tasks import TASKS
    from face_transfer.evaluation import plots, tables
    from face_transfer.evaluation.probes import evaluate_all
    path = run.p("metrics", "transfer.json")
    header("transfer evaluation: linear probes on every task, every representation")
    teachers = teachers or load_teachers(run)
    images, labels = load_eval_data(run)
    reps = all_reps(run, teachers, images)
    tasks = list(TASKS.values())
    results_path = run.p("metrics", "transfer_results.json")
    done = _read_json(results_path) if os.path.exists(results_path) else {}
    todo = {k: v for k, v in reps.items() if k not in done}
    t0 = time.time()
    if todo:
        done.update(evaluate_all(todo, labels, tasks, run.cfg.probe))
        _write_json(results_path, done)
    results = {k: done[k] for k in reps}
    groups = rep_groups(run, results, tasks)
    curve = stage_compression_curve(run, reps, labels)
    meta = {"preset": run.cfg.preset, "seeds": list(run.cfg.probe.seeds), "eval_set_size": run.cfg.data.eval_set_size}
    table = tables.results_table_json(results, tasks, meta)
    table["groups"] = groups
    table["compression_curve"] = curve
    table["compression_99"] = compression_summary(curve)
    _write_json(path, table)
    order = ["pixels", "random_student"] + teacher_names(run) + \
        ["concat", "pca", "random_projection", "ae"] + [r for r in results if r.startswith("ae_")] + \
        [r for r in student_dirs(run) if r in results]
    with open(run.p("metrics", "transfer.md"), "w") as f:
        f.write(tables.results_table_markdown(results, tasks, reps_order=order))
    plots.plot_task_bars(results, tasks, run.p("metrics", "task_bars.png"),
                         reps=[r for r in ["pixels", "random_student", "concat", "ae", "student", "supervised_student"]
                               if r in results])
    plots.plot_compression_curve(curve, run.p("metrics", "compression_curve.png"))
    if "student" in reps:
        plots.plot_embedding_2d(reps["student"]["photo"], labels["photo"]["hair_color"],
                                run.p("metrics", "student_embedding_2d.png"),
                                "student embedding (PCA), coloured by hair colour (a novel task)")
    summary(f"{len(results)} representations x {len(tasks)} tasks x {len(run.cfg.probe.seeds)} seeds "
            f"({time.time() - t0:.0f} s); table {run.p('metrics', 'transfer.md')}")
    for rep in order:
        if rep in groups:
            summary(f"{rep:>22}: novel {groups[rep]['mean_novel']:.1f} ± {groups[rep]['std_novel']:.1f}   "
                    f"source {groups[rep]['mean_source']:.1f} ± {groups[rep]['std_source']:.1f}")
    return table


# ---- export -----------------------------------------------------------------------------------------------------

def stage_export(run: Run) -> dict:
    """SavedModels (student, analyser, fused teacher), TFLite files (float32/16, dynamic, int8 PTQ, int8
    QAT), parity + transfer drop per file, and single-thread latency; parity.json written last."""
    import keras
    from face_transfer.data.tasks import TASKS
    from face_transfer.deploy import infer, savedmodel, tflite
    from face_transfer.evaluation.heads import ANALYZER_TASKS, fit_heads
    from face_transfer.evaluation.probes import evaluate_representation, group_means
    from face_transfer.student.distill import load_student
    header("export: SavedModels, TFLite (float, int8 PTQ, int8 QAT), parity, latency")
    out = run.p("export")
    final = os.path.join(out, "export.json")
    if os.path.exists(final):
        return _read_json(final)
    os.makedirs(out, exist_ok=True)
    ecfg, scfg = run.cfg.export, run.cfg.data.synth
    student = load_student(run.p("student"))
    images, labels = load_eval_data(run)
    feats = _features_cached(run, "student", lambda s: _predict(student, images[s]))
    heads = fit_heads(ANALYZER_TASKS, feats["photo"], labels["photo"], TASKS)
    analyzer = savedmodel.build_analyzer(student, heads)
    meta = savedmodel.analyzer_metadata(heads)
    for name, entry in meta.items():  # readable class names for infer_tflite and apps
        if "classes" in entry:
            entry["classes"] = _class_names(name, entry["classes"])
    for path in ("analyzer_heads.json", "analyzer_int8.labels.json"):
        with open(os.path.join(out, path), "w") as f:
            json.dump(meta, f, indent=1)
    code_fn, _, _ = _fused_teacher_fns(run)
    fused = code_fn()
    for name, model in (("student", student), ("analyzer", analyzer), ("fused_teacher", fused)):
        # export.json (written last) is absent, so anything here is from an interrupted attempt: redo it.
        d = os.path.join(out, f"{name}_savedmodel")
        savedmodel.export_savedmodel(model, d, overwrite=True)
    # calibration faces: a stream no other stage uses; parity faces: fresh too
    calib = synth.render_faces(scfg, np.arange(ecfg.calibration_images), stream="calibration", domain="photo")[0]
    parity = synth.render_faces(scfg, np.arange(ecfg.parity_images), stream="parity", domain="photo")[0]

    def ref_student(x):
        return {"embedding": _predict(student, x)}

    files, reports = {}, {}
    modes = {"float32": tflite.QuantizationConfig.for_float32(), "float16": tflite.QuantizationConfig.for_float16(),
             "dynamic": tflite.QuantizationConfig.for_dynamic(),
             "int8_ptq": tflite.QuantizationConfig.for_int8(calib, steps=len(calib))}
    for mode in ("float32", "int8_ptq"):
        if mode not in ecfg.tflite_modes:
            raise ValueError(f"export.tflite_modes={ecfg.tflite_modes} must include {mode!r} (parity and latency use it)")
    for mode in ecfg.tflite_modes:
        q = modes[mode]
        data = tflite.convert_to_tflite(os.path.join(out, "student_savedmodel"), q)
        reports[f"student_{mode}"] = tflite.validate_tflite(
            data, ref_student, parity, min_cosine=ecfg.min_cosine_int8 if mode == "int8_ptq" else 0.999)
        files[mode] = os.path.join(out, f"student_{mode}.tflite")
        with open(files[mode], "wb") as f:
            f.write(data)
    # the multi-task analyser as one int8 file (the product a phone runs)
    adata = tflite.convert_to_tflite(os.path.join(out, "analyzer_savedmodel"),
                                     tflite.QuantizationConfig.for_int8(calib, steps=len(calib)))
    reports["analyzer_int8_ptq"] = tflite.validate_tflite(
        adata, lambda x: {k: np.asarray(v) for k, v in analyzer.predict(x, verbose=0).items()}, parity,
        min_cosine=ecfg.min_cosine_analyzer)
    with open(os.path.join(out, "analyzer_int8.tflite"), "wb") as f:
        f.write(adata)
    # quantisation-aware training (tf_keras twin; tfmot flips the TF keras alias to legacy process-wide,
    # so it runs in a subprocess)
    qat_info = _qat_subprocess(run, calib)
    if qat_info.get("ok"):
        with open(qat_info["path"], "rb") as f:
            qdata = f.read()
        reports["student_int8_qat"] = tflite.validate_tflite(qdata, ref_student, parity,
                                                             min_cosine=ecfg.min_cosine_int8)
        files["int8_qat"] = qat_info["path"]
    # transfer score drop per task when the probes run on the TFLite embeddings
    tasks = list(TASKS.values())
    base = evaluate_representation(feats, labels, tasks, run.cfg.probe)
    base_g = group_means(base, tasks)
    drops = {}
    for mode in ("int8_ptq", "int8_qat"):
        if mode not in files:
            continue
        interp = infer.load_interpreter(files[mode], num_threads=2)
        tfe = _features_cached(run, f"student_tflite_{mode}",
                               lambda s, it=interp: next(iter(infer.run_tflite(it, images[s]).values())))
        res = evaluate_representation(tfe, labels, tasks, run.cfg.probe)
        g = group_means(res, tasks)
        drops[mode] = {"mean_novel_drop": base_g["mean_novel"] - g["mean_novel"],
                       "mean_source_drop": base_g["mean_source"] - g["mean_source"],
                       "per_task_drop": {t.name: base[t.name]["score_mean"] - res[t.name]["score_mean"] for t in tasks}}
        reports[f"student_{mode}"]["mean_novel_drop"] = drops[mode]["mean_novel_drop"]
    tflite.write_validation_report(reports, out)
    latency = _latency(run, files, fused, parity)
    info = {"files": {k: os.path.relpath(v, run.dir) for k, v in files.items()},
            "bytes": {k: os.path.getsize(v) for k, v in files.items()},
            "analyzer_int8_bytes": len(adata), "cosine": {k: v["cosine_mean"] for k, v in reports.items()},
            "drops": drops, "latency": latency, "qat": qat_info, "interpreter": infer.interpreter_backend()}
    _write_json(final, info)
    summary(f"int8 PTQ {info['bytes']['int8_ptq'] / 1024:.0f} KB (cos {reports['student_int8_ptq']['cosine_mean']:.4f}), "
            f"float32 {info['bytes']['float32'] / 1024:.0f} KB; novel drop "
            + ", ".join(f"{k} {v['mean_novel_drop']:+.2f}" for k, v in drops.items())
            + f"; latency int8 {latency['int8_ms_per_face']:.2f} ms/face, ensemble/int8 x{latency['ensemble_over_int8']:.0f}")
    return info


def _class_names(head: str, classes: list) -> list[str]:
    named = {"expression": synth.EXPRESSIONS, "hair_color": synth.HAIR_COLORS, "gender": ("female", "male")}
    if head in named:
        return [named[head][int(c)] for c in classes]
    return ["no", "yes"] if len(classes) == 2 else [str(c) for c in classes]


def _qat_subprocess(run: Run, calib: np.ndarray) -> dict:
    """Quantisation-aware fine-tune + int8 conversion in a child process (see deploy/qat.py)."""
    import subprocess
    out = run.p("export", "student_int8_qat.tflite")
    if os.path.exists(out):
        return {"ok": True, "path": out}
    cmd = [sys.executable, "-m", "export.qat_student", f"--run_dir={run.dir}", f"--out={out}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not os.path.exists(out):
        print(proc.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"QAT export failed (exit {proc.returncode}); command: {' '.join(cmd)}")
    return {"ok": True, "path": out, "log_tail": proc.stderr[-500:]}


def _matmul_gflops_one_thread(n: int = 512, repeats: int = 20) -> float:
    from threadpoolctl import threadpool_limits
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    with threadpool_limits(limits=1):
        a @ a
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ a
        dt = time.perf_counter() - t0
    return 2 * n ** 3 * repeats / dt / 1e9


def _latency(run: Run, files: dict, fused, images) -> dict:
    """Per-face latency on one face at a time: int8 and float student (TFLite, 1 thread) vs the
    fused teacher ensemble in TF (Keras), measured in one run."""
    from face_transfer.deploy import infer
    runs = run.cfg.export.latency_runs
    one = images[:1]
    res = {}
    for mode in ("int8_ptq", "float32"):
        it = infer.load_interpreter(files[mode], num_threads=1)
        res[f"{mode}_ms"] = infer.benchmark_latency(lambda x, it=it: infer.run_tflite(it, x), one, warmup=3, runs=runs)
    fn = fused.__call__
    res["ensemble_tf_ms"] = infer.benchmark_latency(lambda x: fn(x, training=False), one, warmup=3, runs=runs)
    # Compute lower bound: the student's multiply-adds at this CPU's measured single-thread fp32 matmul
    # throughput (int8 kernels with VNNI can go below it; memory-bound layers stay above it).
    gflops = _matmul_gflops_one_thread()
    mflops = _read_json(run.p("student", "student.json"))["mflops"]
    res["cpu_fp32_gflops_one_thread"] = gflops
    res["flop_bound_ms"] = 2 * mflops * 1e6 / (gflops * 1e9) * 1e3
    res["int8_ms_per_face"] = res["int8_ptq_ms"]
    res["ensemble_over_int8"] = res["ensemble_tf_ms"] / res["int8_ptq_ms"]
    res["float_over_int8"] = res["float32_ms"] / res["int8_ptq_ms"]
    return res


# ---- report and headline figures ------------------------------------------------------------------------------------

def _teacher_records(run: Run) -> dict:
    return {n: _read_json(run.p("teachers", n, "teacher.json")) for n in teacher_names(run)}


def headline(run: Run) -> dict:
    """The figures the issues name (benchmarks/results.json keys), read back from the run directory."""
    from face_transfer.data.tasks import novel_tasks, TASKS
    out = {"tasks.count": len(TASKS), "tasks.novel_count": len(novel_tasks())}
    teachers = _teacher_records(run)
    out["teachers.total_params"] = sum(r["params_embedding"] for r in teachers.values())
    out["teachers.source_scores"] = {k: r["metrics"] for k, r in teachers.items()}
    cache = _read_json(run.p("cache", "manifest.json"))
    if cache.get("images_per_s"):
        out["cache.images_per_s"] = cache["images_per_s"]
    fus = _read_json(run.p("fusion", "fusion.json"))
    out["fusion.code_dim"] = fus["code_dim"]
    out["fusion.compression_ratio"] = fus["compression_ratio"]
    tpath = run.p("metrics", "transfer.json")
    if os.path.exists(tpath):
        table = _read_json(tpath)
        groups = table["groups"]
        for rep, g in groups.items():
            out[f"transfer.mean_novel.{rep}"] = g["mean_novel"]
            out[f"transfer.mean_source.{rep}"] = g["mean_source"]
            out[f"transfer.std_novel.{rep}"] = g["std_novel"]
        out["fusion.retained_fraction"] = groups["ae"]["mean_novel"] / groups["concat"]["mean_novel"]
        out["fusion.compression_99"] = table.get("compression_99")
    spath = run.p("student", "student.json")
    if os.path.exists(spath):
        st = _read_json(spath)
        out["student.params"] = st["params"]
        out["student.mflops"] = st["mflops"]
        enc_params = _encoder_params(run)
        out["teachers_plus_encoder.params"] = out["teachers.total_params"] + enc_params
        out["params_ratio"] = out["teachers_plus_encoder.params"] / st["params"]
        out["teachers_plus_encoder.mflops"] = _teacher_mflops(run) + enc_params / 1e6
        out["flops_ratio"] = out["teachers_plus_encoder.mflops"] / st["mflops"]
        for rep in student_dirs(run):
            p = os.path.join(student_dirs(run)[rep], "student.json")
            if os.path.exists(p) and rep != "student":
                out[f"student.final_loss.{rep}"] = _read_json(p)["final_loss"]
        out["student.final_loss.student"] = st["final_loss"]
    epath = run.p("export", "export.json")
    if os.path.exists(epath):
        ex = _read_json(epath)
        for mode, key in (("float32", "float32"), ("int8_ptq", "int8_ptq"), ("int8_qat", "int8_qat"),
                          ("float16", "float16"), ("dynamic", "dynamic")):
            if mode in ex["bytes"]:
                out[f"tflite.{key}.bytes"] = ex["bytes"][mode]
        for mode in ("int8_ptq", "int8_qat"):
            if f"student_{mode}" in ex["cosine"]:
                out[f"tflite.{mode}.cosine_mean"] = ex["cosine"][f"student_{mode}"]
            if mode in ex["drops"]:
                out[f"tflite.{mode}.mean_novel_drop"] = ex["drops"][mode]["mean_novel_drop"]
        out["latency.ensemble_over_int8"] = ex["latency"]["ensemble_over_int8"]
        out["latency.int8_ms_per_face"] = ex["latency"]["int8_ms_per_face"]
        out["latency.float_over_int8"] = ex["latency"]["float_over_int8"]
        if "flop_bound_ms" in ex["latency"]:
            out["latency.flop_bound_ms"] = ex["latency"]["flop_bound_ms"]
    return out


def _encoder_params(run: Run) -> int:
    import keras
    return int(keras.models.load_model(run.p("fusion", "encoder.keras")).count_params())


def _teacher_mflops(run: Run) -> float:
    """Multiply-adds of every teacher's feature extractor (conv/separable/depthwise/dense), analytic."""
    import math
    total = 0
    for t in load_teachers(run):
        fm = t.feature_model
        if fm is None:
            continue
        for layer in _all_layers(fm):
            kind = type(layer).__name__
            w = layer.get_weights()
            if not w or kind not in ("Conv2D", "Dense", "SeparableConv2D", "DepthwiseConv2D"):
                continue
            shape = tuple(layer.output.shape)
            pix = math.prod(shape[1:-1]) if len(shape) > 2 else 1
            if kind == "SeparableConv2D":
                total += pix * (math.prod(w[0].shape) + math.prod(w[1].shape))
            else:
                total += pix * math.prod(w[0].shape)
    return total / 1e6


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from _all_layers(layer)
        else:
            yield layer


def _fmt(v, nd=1):
    return "n/a" if v is None else (f"{v:,.{nd}f}" if isinstance(v, float) else f"{v:,}")


def write_report(run: Run, wall_s: float | None = None) -> dict:
    """report.md: what a person reads first. Returns the summary lines `make demo` prints."""
    header("report")
    h = headline(run)
    cfg = run.cfg
    teachers = _teacher_records(run)
    fus = _read_json(run.p("fusion", "fusion.json"))
    table = _read_json(run.p("metrics", "transfer.json"))
    groups = table["groups"]
    ex = _read_json(run.p("export", "export.json")) if os.path.exists(run.p("export", "export.json")) else None
    g = lambda rep, k="mean_novel": groups.get(rep, {}).get(k)  # noqa: E731
    bt = groups["best_teacher"]
    L = [f"# face-transfer run report: preset `{cfg.preset}`", ""]
    if wall_s is not None:
        L.append(f"Wall time of this invocation: {wall_s / 60:.1f} min (stages skipped when already complete). ")
    L += ["Everything here was produced by the pipeline into this directory; `config.json` holds the full "
          "configuration and `metrics/` the raw numbers.", "",
          "![sample faces](data/sample_grid.png)", "", "## Teachers (frozen, each on one source task)", "",
          "| teacher | arch | source task | input | params (feature extractor) | source-task metrics |",
          "|---|---|---|---|---:|---|"]
    for n, r in teachers.items():
        sp = r["input_spec"]
        L.append(f"| {n} | {r['arch']} | {r['source_task']} | {sp['size']}x{sp['size']}x{sp['channels']} "
                 f"{sp['color_order']} | {r['params_embedding']:,} | "
                 + ", ".join(f"{k} {v:.2f}" for k, v in r["metrics"].items()) + " |")
    c99 = table.get("compression_99") or {}
    L += ["", "## Fusion auto-encoder", "",
          f"Concatenated (standardised, {fus['config']['standardize']}) teacher embeddings: {fus['concat_dim']} dims "
          f"-> code d = {fus['code_dim']} (compression x{fus['compression_ratio']:.1f}). Validation R² of the "
          "reconstruction per teacher: " + ", ".join(f"{k} {v:.3f}" for k, v in fus["val_r2_per_teacher"].items()) + ".",
          "",
          f"Mean novel-task score at d = {fus['code_dim']}: AE {_fmt(g('ae'))}, PCA {_fmt(g('pca'))}, random projection "
          f"{_fmt(g('random_projection'))}, concatenation {_fmt(g('concat'))} (AE keeps "
          f"{100 * h['fusion.retained_fraction']:.1f}% of the concatenation).",
          "",
          (f"Smallest tested d where the AE keeps >= 99% of the concatenation's novel score: d = {c99.get('d')} "
           f"(compression x{c99.get('ratio'):.1f}; AE {c99.get('ae'):.1f} vs PCA {c99.get('pca'):.1f})."
           if c99.get("d") else f"No tested d keeps 99% of the concatenation's novel score ({c99.get('note')})."),
          "", "Standardisation before the AE: " + ", ".join(
              f"`{r}` {groups[r]['mean_novel']:.1f} ± {groups[r]['std_novel']:.1f}" for r in groups if r.startswith("ae"))
          + f" (mean novel score; `ae` uses {fus['config']['standardize']}).",
          "", "![compression curve](metrics/compression_curve.png)", ""]
    if "student.params" in h:
        L += ["## Student", "",
              f"{cfg.student.arch}, width {cfg.student.width}, input {cfg.student.input_size}: "
              f"{h['student.params']:,} params, {h['student.mflops']:.1f} MFLOPs (multiply-adds). Teachers + encoder: "
              f"{h['teachers_plus_encoder.params']:,} params, {h['teachers_plus_encoder.mflops']:.1f} MFLOPs. "
              f"**Parameter ratio x{h['params_ratio']:.1f}**, FLOP ratio x{h['flops_ratio']:.1f}.", ""]
        for rep in student_dirs(run):
            if f"student.final_loss.{rep}" in h:
                L.append(f"- `{rep}`: final training loss {h[f'student.final_loss.{rep}']:.4f}")
        L += ["", "![student embedding](metrics/student_embedding_2d.png)", ""]
    L += ["## Transfer to every task (linear probes, mean ± std over seeds, 0-100 scores)", "",
          open(run.p("metrics", "transfer.md")).read(), "", "![per-task scores](metrics/task_bars.png)", ""]
    if ex:
        lat = ex["latency"]
        L += ["## Export", "", "| file | bytes | cosine vs float (mean) | novel-score drop |", "|---|---:|---:|---:|"]
        for mode, b in ex["bytes"].items():
            L.append(f"| student_{mode}.tflite | {b:,} | {ex['cosine'].get(f'student_{mode}', float('nan')):.4f} | "
                     f"{ex['drops'].get(mode, {}).get('mean_novel_drop', float('nan')):+.2f} |")
        L += ["", f"Multi-task analyser (student + {len(json.load(open(run.p('export', 'analyzer_heads.json'))))} "
              f"heads), int8: {ex['analyzer_int8_bytes']:,} bytes. TFLite interpreter: {ex['interpreter']}.", "",
              f"Latency, one face, one thread: int8 student {lat['int8_ptq_ms']:.2f} ms, float32 student "
              f"{lat['float32_ms']:.2f} ms, fused teacher ensemble in TF {lat['ensemble_tf_ms']:.2f} ms "
              f"(x{lat['ensemble_over_int8']:.1f} the int8 student)."
              + (f" FLOP lower bound for the student on this CPU: {lat['flop_bound_ms']:.3f} ms "
                 f"({lat['cpu_fp32_gflops_one_thread']:.0f} GFLOP/s single-thread fp32 matmul)."
                 if "flop_bound_ms" in lat else ""), "", "Parity details: `export/parity.md`.", ""]
    # the paper's claims, checked on this run
    claims = ["## The paper's claims on this run", ""]
    st, st_sd = g("student"), g("student", "std_novel")
    ae, conc, btn = g("ae"), g("concat"), bt["mean_novel"]
    if st is not None:
        verdict = "holds" if st > conc else "does not hold"
        claims.append(f"- *The student outperforms its teacher on novel tasks*: student {st:.1f} ± {st_sd:.1f} vs "
                      f"concatenated teachers {conc:.1f}, AE code {ae:.1f}, best single teacher "
                      f"({bt['which_novel']}) {btn:.1f} -> {verdict} against the concatenation, "
                      f"{'holds' if st > ae else 'does not hold'} against the AE code.")
        for ctrl in ("random_student", "supervised_student"):
            if g(ctrl) is not None:
                claims.append(f"- student vs `{ctrl}` (same architecture): {st:.1f} vs {g(ctrl):.1f} "
                              f"({st - g(ctrl):+.1f} points).")
        claims.append(f"- *75x fewer parameters*: x{h['params_ratio']:.1f} here -> "
                      f"{'holds' if h['params_ratio'] >= 75 else 'does not hold at this preset'}.")
    claims.append(f"- *The AE code is efficient in compression and transfer*: x{fus['compression_ratio']:.1f} "
                  f"smaller than the concatenation, keeping {100 * h['fusion.retained_fraction']:.1f}% of its "
                  f"novel-task score; AE {'beats' if (ae or 0) > (g('pca') or 0) else 'does not beat'} PCA at this d "
                  f"({ae:.1f} vs {g('pca'):.1f}).")
    claims.append("- Differences within the seeds' spread are marked in the transfer table's footnote; treat them as ties.")
    L += claims
    with open(run.p("report.md"), "w") as f:
        f.write("\n".join(L) + "\n")
    lines = [f"report: {run.p('report.md')}"]
    if "params_ratio" in h:
        lines.append(f"parameter ratio (teachers + encoder / student): x{h['params_ratio']:.1f} "
                     f"({h['teachers_plus_encoder.params']:,} / {h['student.params']:,})")
        lines.append(f"novel-task score: student {st:.1f} ± {st_sd:.1f} vs teacher concat {conc:.1f}, AE {ae:.1f}, "
                     f"best teacher {btn:.1f}, supervised student {_fmt(g('supervised_student'))}, "
                     f"random student {_fmt(g('random_student'))}")
    if ex:
        lines.append(f"int8 TFLite student: {ex['bytes']['int8_ptq']:,} bytes, novel-score drop "
                     f"{ex['drops'].get('int8_ptq', {}).get('mean_novel_drop', float('nan')):+.2f} points "
                     f"(cosine {ex['cosine']['student_int8_ptq']:.4f})")
    _write_json(run.p("metrics", "headline.json"), h)
    for line in lines:
        summary(line)
    return {"summary_lines": lines, "headline": h}
