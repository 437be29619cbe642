"""Stage `student`: distil the fused teacher into the lightweight student on the run's face source
(plus the loss-comparison variants and, on SynthFaces, the supervised multi-task control and the
per-task ceiling: the same architecture trained on every task's labels).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from face_transfer.stages import inputs
from face_transfer.stages.rundir import Run, header, summary

NAME = "student"
WORKERS = "all"  # under multi-worker training every worker runs it (its share, or collectively)
DEPENDS_ON = ("data", "teachers", "fusion")  # rebuilt upstream stages make this one stale


def supervised_control(run: Run) -> bool:
    """The supervised control learns SynthFaces' source labels: it means something only on SynthFaces."""
    return run.cfg.supervised_control and not inputs.uses_user_faces(run) and run.cfg.data.synth_tasks


def ceiling_tasks(run: Run) -> list:
    """The SynthFaces tasks of this run that a supervised ceiling can learn (the generator renders their
    labels for fresh faces); empty when the ceiling is off or the run has no SynthFaces tasks."""
    from face_transfer.data.tasks import EVAL_SETS
    if not run.cfg.ceiling or not run.cfg.data.synth_tasks:
        return []
    return [t for t in inputs.run_tasks(run) if t.user_set is None and t.eval_set in EVAL_SETS]


def fused_teacher_builders(run: Run):
    """Builders (called inside the strategy scope) for the in-graph distillation targets."""
    import keras
    from face_transfer.fusion.autoencoder import Fusion, build_fused_teacher
    from face_transfer.teachers.cache import build_ensemble

    size = run.cfg.data.synth.image_size

    def ensemble():
        return build_ensemble(inputs.load_teachers(run), image_size=size)

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


def ceiling_distill_config(cfg):
    """The ceiling's training schedule: `cfg.ceiling_budget` times the student's faces (steps x batch), in
    batches of `cfg.ceiling_batch_size` (0: the student's)."""
    batch = cfg.ceiling_batch_size or cfg.distill.batch_size
    scale = cfg.ceiling_budget * cfg.distill.batch_size / batch
    steps = max(1, int(round(cfg.distill.steps * scale)))
    every = max(1, int(round(cfg.distill.checkpoint_every * scale)))
    return dataclasses.replace(cfg.distill, steps=steps, batch_size=batch, checkpoint_every=every)


def student_dirs(run: Run) -> dict:
    """{representation name: directory} of every student variant this config trains."""
    out = {"student": run.p("student")}
    for loss in run.cfg.loss_comparison:
        if loss != run.cfg.distill.loss:
            out[f"student_{loss}"] = run.p(f"student_{loss}")
    if supervised_control(run):
        out["supervised_student"] = run.p("student_supervised")
    if ceiling_tasks(run):
        out["ceiling"] = run.p("student_ceiling")
    return out


def run(run: Run, ctx) -> dict:
    from face_transfer.fusion.autoencoder import Fusion
    from face_transfer.student.distill import distill_student, train_supervised_student
    cfg = run.cfg
    header(f"student: distil the fused teacher into a {cfg.student.arch} (width {cfg.student.width}, "
           f"{cfg.distill.steps} steps, loss {cfg.distill.loss})")
    dims = Fusion.load(run.p("fusion")).standardizer.dims
    code_fn, concat_fn, dec_fn = fused_teacher_builders(run)
    src = inputs.image_source(run, "distill")
    scfg = dataclasses.replace(cfg.student, embedding_dim=cfg.fusion.code_dim)
    records = {}
    for rep, out_dir in student_dirs(run).items():
        t0 = time.time()
        if rep == "supervised_student":
            print("  control: the same student trained on all source-task labels (multi-task supervised)",
                  file=sys.stderr)
            rec = train_supervised_student(scfg, cfg.distill, cfg.data.synth, out_dir, ctx.strategy,
                                           view=cfg.student_view)
        elif rep == "ceiling":
            print("  ceiling: the same student trained on the labels of every task, source and novel, on fresh "
                  "faces of every domain (the per-task reference)", file=sys.stderr)
            rec = train_supervised_student(scfg, ceiling_distill_config(cfg), cfg.data.synth, out_dir, ctx.strategy,
                                           tasks=ceiling_tasks(run), domain="mixed", kind="ceiling",
                                           view=cfg.student_view)
        else:
            dcfg = cfg.distill if rep == "student" else dataclasses.replace(cfg.distill, loss=rep[len("student_"):])
            if rep != "student":
                print(f"  loss comparison: {dcfg.loss}", file=sys.stderr)
            rec = distill_student(scfg, dcfg, src, code_fn, out_dir, ctx.strategy,
                                  decoder_fn=dec_fn, dims=dims, target_concat_fn=concat_fn)
        records[rep] = rec
        summary(f"{rep}: {rec['params']:,} params, {rec['mflops']:.1f} MFLOPs, final loss {rec['final_loss']} "
                f"({time.time() - t0:.0f} s)")
    return {"students": records, "outputs": [os.path.join(d, "student.json") for d in student_dirs(run).values()],
            "artifacts": [os.path.join(d, "model.keras") for d in student_dirs(run).values()],
            "reset": [os.path.join(d, sub) for d in student_dirs(run).values() for sub in ("ckpt", "model.keras")]}

