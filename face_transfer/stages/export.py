"""Stage `export`: SavedModels (student, multi-task analyser, fused teacher), TFLite files (float32/16,
dynamic, int8 PTQ, int8 QAT), parity and transfer drop per file, and single-thread latency.

Every student file (SavedModel, each .tflite, ONNX) has two named outputs (savedmodel.build_student_export):
`embedding`, the distilled code, and `features`, the run's `student_view` of it, on which the headline transfer
score and the int8 files' transfer drops are measured.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from face_transfer.core.fileio import read_json, write_bytes, write_json
from face_transfer.core.runpaths import RunPaths
from face_transfer.deploy.bundle import SYNTHETIC_DOMAIN, analyzer_outputs_metadata, save_bundle
from face_transfer.stages import inputs, register_stage
from face_transfer.stages.features import features_cached, predict_student, student_view
from face_transfer.stages.rundir import Run, header, summary
from face_transfer.stages.student import fused_teacher_builders

NAME = "export"
WORKERS = "chief"  # under multi-worker training only the chief runs it; the others wait for its record
DEPENDS_ON = ("data", "teachers", "fusion", "student", "evaluate")  # rebuilt upstream stages make this one stale


def analyzer_heads(run: Run, student_features: dict, labels: dict) -> tuple[dict, dict]:
    """({output name: head}, {output name: class names}) for every task a phone app would read: the
    SynthFaces photo tasks and every non-verification column of the user's datasets."""
    from face_transfer.data.tasks import EVAL_SETS
    from face_transfer.evaluation.heads import ANALYZER_TASKS, fit_heads
    tasks = {t.name: t for t in inputs.run_tasks(run)}
    heads, names = {}, {}
    by_set: dict[str, list] = {}
    for t in tasks.values():
        if t.kind == "verification":
            continue
        if t.eval_set in EVAL_SETS and (t.name not in ANALYZER_TASKS or t.eval_set != "photo"):
            continue
        by_set.setdefault(t.eval_set, []).append(t)
    for set_name, set_tasks in by_set.items():
        enc_labels = dict(labels[set_name])
        renamed = {}
        for t in set_tasks:
            out_name = _output_name(t.name, taken=set(heads) | set(renamed.values()))
            renamed[t.name] = out_name
            if t.kind == "classification":
                raw = np.asarray(enc_labels[t.labels[0]])
                known = inputs.class_names(run, t)
                if raw.dtype.kind in "US" or known is None:
                    # Heads predict class indices; keep the readable name of each index next to the file.
                    uniq, codes = np.unique(raw, return_inverse=True)
                    if raw.dtype.kind not in "US" and known is not None:
                        uniq = np.asarray(known)[uniq.astype(int)]
                    enc_labels[t.labels[0]] = codes
                    names[out_name] = [str(u) for u in uniq]
                else:
                    names[out_name] = list(known)
        fitted = fit_heads([t.name for t in set_tasks], student_features[set_name], enc_labels, tasks)
        for k, head in fitted.items():
            key = renamed.get(k, k)
            # the task behind the output (a multi-output regression's heads are named after its labels)
            head["task"] = next((t.name for t in set_tasks if t.name == k), None) or next(
                t.name for t in set_tasks if k in t.labels)
            heads[key] = head
            if key in names and "classes" in head:
                idx = head["classes"]
                head_names = names[key]
                names[key] = [head_names[int(c)] if int(c) < len(head_names) else str(c) for c in idx]
    return heads, names


def _output_name(name: str, taken: set) -> str:
    """A SavedModel / TFLite output name: letters, digits and _, not starting with a digit, unique."""
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in name.lower()) or "task"
    if out[0].isdigit():
        out = "t_" + out
    base, i = out, 2
    while out in taken:
        out, i = f"{base}_{i}", i + 1
    return out


def _output_facts(run: Run, task_name: str | None) -> dict:
    """{"task", "units"} of an analyser output, as far as the run knows them: degrees and years from the
    task's metric (mae_deg, mae_years), probabilities for classification heads, image fractions for the
    SynthFaces landmarks (x right, y down, 0..1); nothing is guessed for a user's regression columns."""
    from face_transfer.data.tasks import EVAL_SETS
    tasks = {t.name: t for t in inputs.run_tasks(run)}
    t = tasks.get(task_name)
    if t is None:
        return {}
    units = {"mae_deg": "degrees", "mae_years": "years"}.get(t.metric)
    if t.kind == "classification":
        units = "probability"
    elif t.kind == "landmarks" and t.eval_set in EVAL_SETS:
        units = "image fraction (x right, y down, 0..1)"
    return {"task": t.name, **({"units": units} if units else {})}


def student_outputs_metadata(view: str, code_dim: int, features_dim: int) -> dict:
    """{output name: {"kind", "description"}} of the exported student's two outputs (savedmodel.build_student_export),
    saying which one the run's headline transfer score is measured on."""
    if view == "embedding":
        features = (f"facial features, {features_dim} floats: the run's `embedding` view, the facial code itself "
                    "(equal to `embedding`); the view the run's headline transfer score (the `student` row of its "
                    "transfer table, linear probes) is measured on")
    else:
        features = (f"facial features, {features_dim} floats: the run's `{view}` view (the facial code next to the "
                    "average-pooled output of every resolution stage of the student); the view the run's headline "
                    "transfer score (the `student` row of its transfer table, linear probes) is measured on and "
                    "the analyser's heads read: fit your heads on this output")
    embedding = f"facial code, {code_dim} floats (the fusion auto-encoder's code the student was distilled to" + (
        "; its transfer score is the `student_code` row of the run's transfer table)" if view != "embedding" else ")")
    return {"embedding": {"kind": "embedding", "description": embedding},
            "features": {"kind": "embedding", "description": features}}


def _trained_on(run: Run, task_name: str | None, feats: dict) -> dict | None:
    """What a head was fitted on (shown next to it by face-transfer-infer and the browser page): the eval set of
    its task, with a flag when those are synthetic faces."""
    from face_transfer.data.tasks import EVAL_SETS
    t = {t.name: t for t in inputs.run_tasks(run)}.get(task_name)
    if t is None:
        return None
    n = int(len(feats[t.eval_set])) if t.eval_set in feats else None
    if t.eval_set in EVAL_SETS:
        return {"dataset": f"SynthFaces ({t.eval_set} eval set)", "images": n, "domain": SYNTHETIC_DOMAIN,
                "synthetic": True}
    ts = next((x for i, x in enumerate(run.cfg.data.task_sets) if inputs.task_set_name(run, i) == t.eval_set), None)
    return {"dataset": t.eval_set, "path": ts.path if ts else None, "images": n, "domain": "real", "synthetic": False}


def _metadata_writer(run: Run, analyzer_meta: dict, code_dim: int, features_dim: int):
    """fn(tflite bytes, "student"|"analyzer", mode) -> the bytes with TFLite metadata (deploy/metadata.py):
    RGB uint8 0..255 input, named outputs with kinds, units and class-label files, and a description with
    the run's headline figures and the SHA-256 of its config.json (also `fn.config_sha256`)."""
    import hashlib

    from face_transfer import __version__
    from face_transfer.deploy import metadata
    # The configuration this export ran with, as the invocation wrote it to config.json (Run.open writes
    # cfg.to_json() there): equal to `sha256sum config.json` right after the run.
    sha = hashlib.sha256(run.cfg.to_json().encode("utf-8")).hexdigest()
    figures = {"preset": run.cfg.preset, "config_sha256": sha, "code_dim": code_dim}
    tpath = run.paths.transfer_json
    if os.path.exists(tpath):
        groups = read_json(tpath)["groups"]
        for rep in ("student", "concat", "ae"):
            if rep in groups:
                figures[f"novel_score.{rep}"] = round(groups[rep]["mean_novel"], 2)
                figures[f"novel_score_std.{rep}"] = round(groups[rep]["std_novel"], 2)
        if "best_teacher" in groups:
            figures["novel_score.best_teacher"] = round(groups["best_teacher"]["mean_novel"], 2)
            figures["best_teacher"] = groups["best_teacher"].get("which_novel")
    spath = run.paths.student_json
    if os.path.exists(spath):
        st = read_json(spath)
        figures.update({"student.params": st.get("params"), "student.mflops": st.get("mflops")})
    headline = ", ".join(
        [f"novel-task score (linear probes, 0-100) {figures['novel_score.student']:.1f} ± "
         f"{figures['novel_score_std.student']:.1f} vs concatenated teachers {figures.get('novel_score.concat', float('nan')):.1f} "
         f"and best single teacher {figures.get('novel_score.best_teacher', float('nan')):.1f}"]
        if "novel_score.student" in figures else [])
    size = f"{figures['student.params']:,} params, {figures['student.mflops']:.1f} MFLOPs" \
        if figures.get("student.params") else ""

    def described(data: bytes, model: str, mode: str) -> bytes:
        if model == "student":
            name, what = f"face-transfer student ({mode})", (
                f"Distilled face-transfer student: one RGB face crop -> `embedding`, a {code_dim}-d general facial "
                "code (the fusion auto-encoder's code of the teacher ensemble), and `features`, the "
                f"{features_dim}-d `{run.cfg.student_view}` view the run's transfer score is measured on, for "
                "linear heads on any facial task.")
            outputs = student_outputs_metadata(run.cfg.student_view, code_dim, features_dim)
        else:
            name, what = f"face-transfer facial analyser ({mode})", (
                f"Multi-task facial analyser: the distilled student plus {len(analyzer_meta)} linear heads "
                "(softmax probabilities per class, regressions in their task's units, 5 landmarks).")
            outputs = analyzer_outputs_metadata(analyzer_meta, code_dim)
        description = " ".join(x for x in (
            what, "Input: RGB uint8 [N,S,S,3], raw pixels 0..255 (scaled to [-1, 1] inside the graph).",
            f"Run (preset {run.cfg.preset}): {headline}." if headline else "", f"Student: {size}." if size else "",
            f"Config: sha256 {sha} of the run's config.json.") if x)
        return metadata.write_metadata(
            data, name=name, description=description, outputs=outputs,
            version=f"face-transfer {__version__}, config {sha[:12]}", color_space="RGB",
            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), value_range=(0, 255),
            extra={"model": model, "mode": mode, "run": figures})

    described.config_sha256 = sha
    return described


@register_stage
def run(run: Run, ctx) -> dict:
    """SavedModels, TFLite files, parity + transfer drop per file, latency; export.json written last."""
    from face_transfer.deploy import infer, onnx_export, savedmodel, tflite
    from face_transfer.deploy.modes import get_mode
    from face_transfer.core.interpreter import interpreter_backend, load_interpreter
    from face_transfer.evaluation.probes import evaluate_all, group_means
    from face_transfer.student.training import load_student
    header("export: SavedModels, TFLite (float, int8 PTQ, int8 QAT), parity, latency")
    out = run.paths.export_dir
    final = run.paths.export_json
    if os.path.exists(final):
        return {**read_json(final), "outputs": [final], "artifacts": [out]}
    os.makedirs(out, exist_ok=True)
    ecfg = run.cfg.export
    student = load_student(run.paths.student_dir())
    images, labels = inputs.load_eval_data(run)
    feats = features_cached(run, "student", lambda s: predict_student(run, student, images[s]))
    heads, class_names = analyzer_heads(run, feats, labels)
    analyzer = savedmodel.build_analyzer(student, heads, features=student_view(run, student))
    meta = savedmodel.analyzer_metadata(heads)
    for name, entry in meta.items():  # readable class names for infer_tflite and apps
        if "classes" in entry:
            entry["classes"] = class_names.get(name) or (
                ["no", "yes"] if len(entry["classes"]) == 2 else [str(c) for c in entry["classes"]])
        entry.update(_output_facts(run, heads[name].get("task")))
        entry["trained_on"] = _trained_on(run, heads[name].get("task"), feats)
    for path in (run.paths.analyzer_heads_json, run.paths.analyzer_labels_json):
        write_json(path, meta)
    # the student folder face-transfer-adapt and face_transfer.api start from: the Keras student, its view, the heads
    save_bundle(out, student, run.cfg.student_view, heads, meta, extra={"preset": run.cfg.preset})
    code_fn, _, _ = fused_teacher_builders(run)
    fused = code_fn()
    # every student file has both outputs: `embedding` (the code) and `features` (the probed view, the headline)
    student_export = savedmodel.build_student_export(student, run.cfg.student_view)
    exported = [("student", student_export), ("analyzer", analyzer)]
    if all(getattr(t, "in_graph_exportable", True) for t in inputs.load_teachers(run)):
        exported.append(("fused_teacher", fused))
    else:
        summary("fused_teacher SavedModel skipped: a teacher runs outside TensorFlow (TFLite, ONNX or dlib), "
                "so the ensemble cannot be serialised")
    for name, model in exported:
        # export.json (written last) is absent, so anything here is from an interrupted attempt: redo it.
        savedmodel.export_savedmodel(model, run.paths.savedmodel_dir(name), overwrite=True)
    src = inputs.image_source(run)
    calib = src.images(0, src.count(ecfg.calibration_images), "calibration")
    parity = src.images(0, src.count(ecfg.parity_images), "parity")

    def ref_student(x):
        return {k: np.asarray(v) for k, v in student_export.predict(x, verbose=0).items()}

    def ref_analyzer(x):
        return {k: np.asarray(v) for k, v in analyzer.predict(x, verbose=0).items()}

    student_dims = {k: int(v.shape[-1]) for k, v in student_export.output.items()}
    described = _metadata_writer(run, meta, student_dims["embedding"], student_dims["features"])

    files, reports = {}, {}
    for mode in ("float32", "int8_ptq"):
        if mode not in ecfg.tflite_modes:
            raise ValueError(f"export.tflite_modes={ecfg.tflite_modes} must include {mode!r} (parity and latency use it)")
    for mode in ecfg.tflite_modes:
        qcfg = tflite.QuantizationConfig.for_mode(mode, calib)  # a mode of face_transfer.deploy.modes
        data = described(tflite.convert_to_tflite(run.paths.savedmodel_dir("student"), qcfg), "student", mode)
        reports[f"student_{mode}"] = tflite.validate_tflite(
            data, ref_student, parity, min_cosine=ecfg.min_cosine_int8 if get_mode(mode).integer else 0.999)
        files[mode] = run.paths.student_tflite(mode)
        with open(files[mode], "wb") as f:
            f.write(data)
    # the multi-task analyser as one int8 file (the product a phone runs)
    adata = described(tflite.convert_to_tflite(run.paths.savedmodel_dir("analyzer"),
                                               tflite.QuantizationConfig.for_int8(calib, steps=len(calib))),
                      "analyzer", "int8_ptq")
    reports["analyzer_int8_ptq"] = tflite.validate_tflite(adata, ref_analyzer, parity,
                                                          min_cosine=ecfg.min_cosine_analyzer)
    with open(run.paths.analyzer_tflite, "wb") as f:
        f.write(adata)
    # quantisation-aware training (tf_keras twin; tfmot flips the TF keras alias to legacy process-wide,
    # so it runs in a subprocess)
    qat_info = _qat_subprocess(run) if ecfg.qat_steps > 0 else {"ok": False, "skipped": "export.qat_steps=0"}
    if qat_info.get("ok"):
        with open(qat_info["path"], "rb") as f:
            qdata = described(f.read(), "student", "int8_qat")  # replaces any metadata of an earlier attempt
        write_bytes(qat_info["path"], qdata)
        reports["student_int8_qat"] = tflite.validate_tflite(qdata, ref_student, parity,
                                                             min_cosine=ecfg.min_cosine_int8)
        files["int8_qat"] = qat_info["path"]
    # transfer score drop per task when the probes run on the TFLite files' `features` output: the view the
    # run probes, so the float reference is the evaluate stage's own `student` features (the headline score)
    tasks = inputs.run_tasks(run)
    feats_by_mode = {"float": feats}
    for mode in ("int8_ptq", "int8_qat"):
        if mode in files:
            interp = load_interpreter(files[mode], num_threads=2)
            feats_by_mode[mode] = features_cached(run, f"student_tflite_{mode}_features",
                                                  lambda s, it=interp: infer.run_tflite(it, images[s])["features"])
    probed = evaluate_all(feats_by_mode, labels, tasks, run.cfg.probe, progress=False)  # in parallel
    base = probed.pop("float")
    base_g = group_means(base, tasks)
    drops = {}
    for mode, res in probed.items():
        g = group_means(res, tasks)
        drops[mode] = {"mean_novel_drop": base_g["mean_novel"] - g["mean_novel"],
                       "mean_source_drop": base_g["mean_source"] - g["mean_source"],
                       "per_task_drop": {t.name: base[t.name]["score_mean"] - res[t.name]["score_mean"] for t in tasks}}
        reports[f"student_{mode}"]["mean_novel_drop"] = drops[mode]["mean_novel_drop"]
    # ONNX files of the student and the analyser (float, from the SavedModels), checked with onnxruntime
    onnx_info = {}
    for name, ref in (("student", ref_student), ("analyzer", ref_analyzer)):
        conv = onnx_export.export_onnx(run.paths.savedmodel_dir(name), run.paths.onnx_file(name))
        rep = reports[f"{name}_onnx"] = onnx_export.validate_onnx(conv["path"], ref, parity)
        onnx_info[name] = {"file": os.path.relpath(conv["path"], run.dir), "bytes": conv["bytes"], "opset": conv["opset"],
                           "outputs": len(conv["outputs"]), "output_names": sorted(conv["outputs"]),
                           "max_abs_diff": rep["max_abs_diff"],
                           "embedding_cosine_mean": rep["embedding_cosine_mean"],
                           "embedding_cosine_min": rep["embedding_cosine_min"], "runtime": rep["runtime"]}
        if "features" in rep["outputs"]:
            onnx_info[name]["features_cosine_mean"] = rep["outputs"]["features"]["cosine_mean"]
            onnx_info[name]["features_cosine_min"] = rep["outputs"]["features"]["cosine_min"]
    summary("ONNX (opset %d, onnxruntime vs TF): " % onnx_export.DEFAULT_OPSET + ", ".join(
        f"{k} {v['bytes'] / 1024:.0f} KB max |diff| {v['max_abs_diff']:.2g} cos {v['embedding_cosine_mean']:.6f}"
        for k, v in onnx_info.items()))
    tflite.write_validation_report(reports, out)
    latency = _latency(run, files, fused, parity)
    info = {"files": {k: os.path.relpath(v, run.dir) for k, v in files.items()},
            "bytes": {k: os.path.getsize(v) for k, v in files.items()},
            "analyzer_int8_bytes": len(adata), "cosine": {k: v["cosine_mean"] for k, v in reports.items()},
            # what every student file (SavedModel, .tflite, ONNX) outputs, and which output the drops are measured on
            "student_outputs": {"view": run.cfg.student_view, "dims": student_dims, "drops_measured_on": "features"},
            "drops": drops, "latency": latency, "qat": qat_info, "interpreter": interpreter_backend(),
            "analyzer_outputs": sorted(meta), "onnx": onnx_info,
            "tflite_metadata": {"config_sha256": described.config_sha256, "files": sorted(
                [os.path.relpath(v, run.dir) for v in files.values()] + [run.paths.rel(run.paths.analyzer_tflite)])}}
    write_json(final, info)
    summary(f"int8 PTQ {info['bytes']['int8_ptq'] / 1024:.0f} KB (cos {reports['student_int8_ptq']['cosine_mean']:.4f}), "
            f"float32 {info['bytes']['float32'] / 1024:.0f} KB; novel drop "
            + ", ".join(f"{k} {v['mean_novel_drop']:+.2f}" for k, v in drops.items())
            + f"; latency int8 {latency['int8_ms_per_face']:.2f} ms/face, ensemble/int8 x{latency['ensemble_over_int8']:.0f}")
    _web_page(run, out)
    return {**info, "outputs": [final], "artifacts": [out],
            "reset": [run.paths.student_tflite("int8_qat")]
            + [run.paths.features_rep_dir(f"student_tflite_{m}_features") for m in ("int8_ptq", "int8_qat")]}


def _web_page(run: Run, out: str) -> None:
    """export/web/: the browser page running the int8 analyser with LiteRT.js (face_transfer.deploy.web), when
    LiteRT.js is installed (`make web`); otherwise a notice, and the export goes on without it."""
    from face_transfer.deploy import web
    ok, reason = web.web_status()
    if not ok:
        summary(f"browser page not built: {reason}")
        return
    page = web.build_web_page(out)
    summary(f"browser page: {page['dir']}/index.html; open it with: python -m export.serve_web --run_dir={run.dir}")


# What the QAT child process runs: the library function, not a CLI.
_QAT_CHILD = "import sys; from face_transfer.stages.export import qat_export; qat_export(sys.argv[1], sys.argv[2])"


def _qat_subprocess(run: Run) -> dict:
    """Quantisation-aware fine-tune + int8 conversion (qat_export) in a child process: importing tfmot switches
    TF's keras alias to tf_keras for the whole process (deploy/qat.py), which this process must not see."""
    import subprocess
    from face_transfer.deploy.metadata import model_io
    from face_transfer.deploy.savedmodel import STUDENT_OUTPUTS
    out = run.paths.student_tflite("int8_qat")
    if os.path.exists(out):
        # a file of an interrupted attempt by an older version (the code only) is made again with both outputs
        if sorted(o["name"] for o in model_io(out)["outputs"]) == sorted(STUDENT_OUTPUTS):
            return {"ok": True, "path": out}
        os.remove(out)
    cmd = [sys.executable, "-c", _QAT_CHILD, run.dir, out]
    env = {"TF_CPP_MIN_LOG_LEVEL": "2", **os.environ}  # TF's C++ start-up lines stay out of the log tail
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0 or not os.path.exists(out):
        print(proc.stderr[-3000:], file=sys.stderr)
        raise RuntimeError(f"QAT export failed (exit {proc.returncode}); qat_export({run.dir!r}, {out!r}) "
                           "in a child process")
    return {"ok": True, "path": out, "log_tail": proc.stderr[-500:]}


def _latency(run: Run, files: dict, fused, images) -> dict:
    """Per-face latency on one face at a time: int8 and float student (TFLite, 1 thread) vs the
    fused teacher ensemble in TF (Keras), measured in one run."""
    from face_transfer.deploy import infer
    from face_transfer.core.interpreter import interpreter_backend, load_interpreter
    runs = run.cfg.export.latency_runs
    one = images[:1]
    res = {}
    for mode in ("int8_ptq", "float32"):
        it = load_interpreter(files[mode], num_threads=1)
        res[f"{mode}_ms"] = infer.benchmark_latency(lambda x, it=it: infer.run_tflite(it, x), one, warmup=3, runs=runs)
    fn = fused.__call__
    res["ensemble_tf_ms"] = infer.benchmark_latency(lambda x: fn(x, training=False), one, warmup=3, runs=runs)
    # Compute lower bound: the student's multiply-adds at this CPU's measured single-thread fp32 matmul
    # throughput (int8 kernels with VNNI can go below it; memory-bound layers stay above it).
    from face_transfer.machine import cpu_isa_flags, matmul_gflops_one_thread
    gflops = matmul_gflops_one_thread()
    mflops = read_json(run.paths.student_json)["mflops"]
    res["cpu_fp32_gflops_one_thread"] = gflops
    res["cpu_isa"] = cpu_isa_flags()
    res["flop_bound_ms"] = 2 * mflops * 1e6 / (gflops * 1e9) * 1e3
    res["int8_ms_per_face"] = res["int8_ptq_ms"]
    res["ensemble_over_int8"] = res["ensemble_tf_ms"] / res["int8_ptq_ms"]
    res["float_over_int8"] = res["float32_ms"] / res["int8_ptq_ms"]
    return res



def qat_export(run_dir: str, out: str, steps: int | None = None) -> int:
    """Quantisation-aware fine-tune of a run's student on its own face source, then int8 TFLite to `out`.

    Imports tfmot, which switches TF's keras alias to tf_keras for the whole process: call it in a
    process of its own (the export stage's child process, or export/qat_student.py). Returns the file size.
    """
    import dataclasses

    from face_transfer.configs import ExperimentConfig
    from face_transfer.student.training import load_student
    cfg = ExperimentConfig.from_dict(read_json(RunPaths(run_dir).config_json))
    run = Run(run_dir, cfg)
    student = load_student(run.paths.student_dir())
    fused = fused_teacher_builders(run)[0]()
    from face_transfer.deploy.qat import convert_qat_to_tflite, qat_finetune  # tfmot: after Keras 3 loads
    scfg = dataclasses.replace(cfg.student, embedding_dim=cfg.fusion.code_dim)
    bs = cfg.distill.batch_size
    src = inputs.image_source(run, "distill")
    n = src.count(10**9)

    def images_fn(step):
        if n < 10**9:  # a finite set of the user's faces: walk through it, wrapping around
            start = (step * bs) % max(1, n - bs + 1)
            return src.images(start, start + min(bs, n), "qat")
        return src.images(step * bs, (step + 1) * bs, "qat")

    steps = steps if steps is not None else cfg.export.qat_steps
    # with both outputs of the other student files: the code and the run's view (savedmodel.build_student_export)
    qat = qat_finetune(student, scfg, images_fn, lambda x: np.asarray(fused(x, training=False)), steps, bs,
                       cfg.export.qat_learning_rate, view=cfg.student_view)
    calib_src = inputs.image_source(run)
    calib = calib_src.images(0, calib_src.count(cfg.export.calibration_images), "calibration")
    data = convert_qat_to_tflite(qat, calib)
    write_bytes(out, data)
    return len(data)
