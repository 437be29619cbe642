"""Stage `student`: distil the fused teacher into the lightweight student on the run's face source
(plus the loss-comparison variants and, on SynthFaces, the supervised multi-task control and the
per-task ceiling: the same architecture trained on every task's labels).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time

from face_transfer.stages import inputs, register_stage
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
        return build_fused_teacher(ensemble(), Fusion.load(run.paths.fusion_dir))

    def concat_model():
        fusion = Fusion.load(run.paths.fusion_dir)
        ens = ensemble()
        from keras import ops
        embs = ens(ens.input)
        blocks = [ops.matmul(embs[k] - fusion.standardizer.means[k], fusion.standardizer.mats[k])
                  for k in fusion.standardizer.teachers]
        m = keras.Model(ens.input, ops.concatenate(blocks, -1), name="teacher_concat")
        m.trainable = False
        return m

    def decoder():
        return Fusion.load(run.paths.fusion_dir).decoder

    return code_model, concat_model, decoder


def labelled_distill_config(distill):
    """The schedule of a network of the student's architecture trained on labels (the supervised control; the
    ceiling's base): as many updates as the student makes (steps x echo), each on fresh faces. It has no teachers'
    pass to save, so it does not echo: it sees at least the student's faces."""
    if distill.echo == 1:
        return distill
    return dataclasses.replace(distill, steps=distill.steps * distill.echo,
                               checkpoint_every=distill.checkpoint_every * distill.echo, echo=1)


def ceiling_distill_config(cfg):
    """The ceiling's training schedule: `cfg.ceiling_budget` times the student's updates in faces (steps x echo x
    batch), in batches of `cfg.ceiling_batch_size` (0: the student's)."""
    base = labelled_distill_config(cfg.distill)
    batch = cfg.ceiling_batch_size or base.batch_size
    scale = cfg.ceiling_budget * base.batch_size / batch
    steps = max(1, int(round(base.steps * scale)))
    every = max(1, int(round(base.checkpoint_every * scale)))
    return dataclasses.replace(base, steps=steps, batch_size=batch, checkpoint_every=every)


def student_variants(run: Run) -> dict:
    """{representation name: its folder in the run (a RunPaths student variant)} of every student this config
    trains."""
    out = {"student": "student"}
    for loss in run.cfg.loss_comparison:
        if loss != run.cfg.distill.loss:
            out[f"student_{loss}"] = f"student_{loss}"
    if supervised_control(run):
        out["supervised_student"] = "student_supervised"
    if ceiling_tasks(run):
        out["ceiling"] = "student_ceiling"
    return out


def student_dirs(run: Run) -> dict:
    """{representation name: directory} of every student variant this config trains."""
    return {rep: run.paths.student_dir(v) for rep, v in student_variants(run).items()}


def train_one(run: Run, rep: str, out_dir: str, strategy=None) -> dict:
    """Train (or load, when finished) one of `student_dirs(run)`: the student, a loss-comparison variant, the
    supervised control or the ceiling."""
    from face_transfer.fusion.autoencoder import Fusion
    from face_transfer.student.distill import distill_student
    from face_transfer.student.supervised import train_supervised_student
    cfg = run.cfg
    scfg = dataclasses.replace(cfg.student, embedding_dim=cfg.fusion.code_dim)
    if rep == "supervised_student":
        print("  control: the same student trained on all source-task labels (multi-task supervised)",
              file=sys.stderr)
        return train_supervised_student(scfg, labelled_distill_config(cfg.distill), cfg.data.synth, out_dir, strategy,
                                        view=cfg.student_view)
    if rep == "ceiling":
        print("  ceiling: the same student trained on the labels of every task, source and novel, on fresh "
              "faces of every domain (the per-task reference)", file=sys.stderr)
        return train_supervised_student(scfg, ceiling_distill_config(cfg), cfg.data.synth, out_dir, strategy,
                                        tasks=ceiling_tasks(run), domain="mixed", kind="ceiling", view=cfg.student_view)
    dcfg = cfg.distill if rep == "student" else dataclasses.replace(cfg.distill, loss=rep[len("student_"):])
    if rep != "student":
        print(f"  loss comparison: {dcfg.loss}", file=sys.stderr)
    dims = Fusion.load(run.paths.fusion_dir).standardizer.dims
    code_fn, concat_fn, dec_fn = fused_teacher_builders(run)
    return distill_student(scfg, dcfg, inputs.image_source(run, "distill"), code_fn, out_dir, strategy,
                           decoder_fn=dec_fn, dims=dims, target_concat_fn=concat_fn)


def _relative_cost(run: Run, rep: str) -> float:
    """A network's work in student updates of one face (a distilled network also pays the teachers' pass, about
    one update's cost, per face): the longest jobs start first."""
    if rep == "ceiling":
        d = ceiling_distill_config(run.cfg)
    elif rep == "supervised_student":
        d = labelled_distill_config(run.cfg.distill)
    else:
        d = run.cfg.distill
        return float(d.steps * d.batch_size * (d.echo + 1))
    return float(d.steps * d.batch_size)


def parallel_workers(run: Run, strategy, todo: list) -> int:
    """How many processes train the stage's networks (`todo`) side by side: at most one per network, and
    ExperimentConfig.student_workers of them (0: one per usable core). 1, in this process, when there is a
    single network or a distribution strategy (mirrored, multi-worker, TPU) runs the stage."""
    import tensorflow as tf
    if len(todo) < 2 or not (strategy is None or strategy is tf.distribute.get_strategy()):
        return 1
    from face_transfer.evaluation.probes import probe_workers
    return probe_workers(len(todo), run.cfg.student_workers or None)


def _train_in_process(run_dir: str, cfg_json: str, rep: str, out_dir: str, threads: int):
    """A spawned worker: `threads` TensorFlow threads, then train_one as the sequential stage would."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    from face_transfer.configs import ExperimentConfig
    t0 = time.time()
    rec = train_one(Run(run_dir, ExperimentConfig.from_json(cfg_json)), rep, out_dir)
    return rec, time.time() - t0


@register_stage
def run(run: Run, ctx) -> dict:
    cfg = run.cfg
    header(f"student: distil the fused teacher into a {cfg.student.arch} (width {cfg.student.width}, "
           f"{cfg.distill.steps} steps, loss {cfg.distill.loss})")
    dirs, variants = student_dirs(run), student_variants(run)
    records = {}

    def done(rep, rec, seconds):
        records[rep] = rec
        summary(f"{rep}: {rec['params']:,} params, {rec['mflops']:.1f} MFLOPs, final loss {rec['final_loss']} "
                f"({seconds:.0f} s)")

    todo = [r for r in dirs if not os.path.exists(run.paths.student_record(variants[r]))]
    n = parallel_workers(run, ctx.strategy, todo)
    if n > 1:
        # Small-batch training of a small CNN keeps two threads half idle: the networks train side by side,
        # one process each, the cores shared out (results equal the sequential stage's up to float rounding).
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from face_transfer.evaluation.probes import main_module_hidden
        from face_transfer.machine import usable_cores
        threads = max(1, usable_cores() // n)
        order = sorted(todo, key=lambda r: -_relative_cost(run, r))
        summary(f"training {', '.join(order)} in {n} processes of {threads} thread(s)")
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
            with main_module_hidden():
                futures = {pool.submit(_train_in_process, run.dir, cfg.to_json(), r, dirs[r], threads): r
                           for r in order}
            for future in as_completed(futures):
                done(futures[future], *future.result())
    for rep, out_dir in dirs.items():
        if rep not in records:
            t0 = time.time()
            done(rep, train_one(run, rep, out_dir, ctx.strategy), time.time() - t0)
    records = {r: records[r] for r in dirs}
    vs = variants.values()
    return {"students": records, "outputs": [run.paths.student_record(v) for v in vs],
            "artifacts": [run.paths.student_model(v) for v in vs],
            "reset": [p for v in vs for p in (run.paths.student_ckpt(v), run.paths.student_model(v))]}
