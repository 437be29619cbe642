"""Seconds of the distillation alone, on a finished run (teachers and fusion done), for DistillConfig overrides.

Trains a throw-away student into a temporary directory with the run's distillation (plus `--set` overrides) and
prints the seconds and the final loss, `--repeats` times; `--threads` sets TensorFlow's intra- and inter-op threads
first. Used for BENCHMARKS.md's step-overhead figures:

    .venv/bin/python -m benchmarks.time_distill --run_dir=runs/bench/demo --set=steps=300,steps_per_execution=1

`--profile=DIR` runs the distillation under TensorFlow's profiler (trace in DIR, viewable in TensorBoard's profile
tab) and prints where the CPU time went: self time per op type, summed over every thread of the host plane,
read from the trace's XSpace proto with TensorFlow's own protobuf classes.

`--split` times the parts of a step instead (the teachers' forward pass, the student's training step with stock and
with fused batch normalisation, and the fused one compiled by XLA), which is where BENCHMARKS.md's "where the distillation's time goes" comes from.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time

from face_transfer.core.runpaths import RunPaths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run_dir", required=True)
    ap.add_argument("--set", default="", help="DistillConfig overrides, e.g. 'steps=300,steps_per_execution=1'")
    ap.add_argument("--threads", type=int, default=0, help="TensorFlow threads (0: its default, every core)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--split", action="store_true", help="instead: images/s of the parts of one step at the run's "
                    "batch (the teachers' forward pass; the student's training step with stock and with fused "
                    "batch normalisation), each timed alone for --split_seconds")
    ap.add_argument("--split_seconds", type=float, default=8.0)
    ap.add_argument("--profile", default="", help="a directory: trace the distillation with the TF profiler there "
                    "and print the self time per op type")
    ap.add_argument("--top", type=int, default=20, help="--profile: op types listed")
    args = ap.parse_args(argv)
    if args.threads:
        import tensorflow as tf
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from benchmarks.ablate_distill import parse_overrides
    from face_transfer.configs import ExperimentConfig
    from face_transfer.fusion.autoencoder import Fusion
    from face_transfer.stages import inputs
    from face_transfer.stages.rundir import Run
    from face_transfer.stages.student import fused_teacher_builders
    from face_transfer.student.distill import distill_student

    cfg = ExperimentConfig.from_file(RunPaths(args.run_dir).config_json)
    run = Run(args.run_dir, cfg)  # read-only use of a finished run
    dcfg = dataclasses.replace(cfg.distill, **parse_overrides(args.set, cfg.distill))
    dcfg = dataclasses.replace(dcfg, checkpoint_every=dcfg.steps, log_every=10 ** 9)
    dims = Fusion.load(run.paths.fusion_dir).standardizer.dims
    code_fn, concat_fn, dec_fn = fused_teacher_builders(run)
    src = inputs.image_source(run, "distill")
    scfg = dataclasses.replace(cfg.student, embedding_dim=cfg.fusion.code_dim)
    if args.split:
        return split_step(scfg, dcfg, src, concat_fn, dec_fn, dims, args)
    for rep in range(args.repeats):
        out = tempfile.mkdtemp(prefix="time_distill_")
        try:
            if args.profile:
                import tensorflow as tf
                tf.profiler.experimental.start(args.profile)
            t0 = time.time()
            rec = distill_student(scfg, dcfg, src, code_fn, out, decoder_fn=dec_fn, dims=dims,
                                  target_concat_fn=concat_fn)
            print(f"[time_distill] {args.set or 'the run'} threads={args.threads or 'default'} repeat {rep}: "
                  f"{time.time() - t0:.1f} s in all, {rec['train_seconds_this_run']} s training, "
                  f"final loss {rec['final_loss']:.4f}", flush=True)
            if args.profile:
                tf.profiler.experimental.stop()
                print_op_times(op_self_times(args.profile), args.top)
        finally:
            shutil.rmtree(out, ignore_errors=True)


def op_self_times(profile_dir: str) -> dict[str, float]:
    """{op type: self seconds} over every line (thread) of the host CPU planes of the newest trace in
    `profile_dir`: an event's self time is its duration minus that of the events nested in it on its line."""
    import glob
    import os
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    paths = sorted(glob.glob(os.path.join(profile_dir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not paths:
        raise SystemExit(f"--profile={profile_dir}: no *.xplane.pb trace was written there")
    space = xplane_pb2.XSpace()
    with open(paths[-1], "rb") as f:
        space.ParseFromString(f.read())
    totals: dict[str, float] = {}
    for plane in space.planes:
        if "host" not in plane.name.lower() and "cpu" not in plane.name.lower():
            continue
        names = {k: (m.display_name or m.name) for k, m in plane.event_metadata.items()}
        for line in plane.lines:
            events = sorted(((e.offset_ps, e.duration_ps, names.get(e.metadata_id, "?")) for e in line.events),
                            key=lambda e: (e[0], -e[1]))
            stack: list[list] = []  # [end_ps, name, self_ps]
            for start, dur, name in events:
                while stack and stack[-1][0] <= start:
                    end, n, own = stack.pop()
                    totals[n] = totals.get(n, 0.0) + own
                if stack:
                    stack[-1][2] -= dur
                stack.append([start + dur, _op_type(name), dur])
            for end, n, own in stack:
                totals[n] = totals.get(n, 0.0) + own
    return {k: v / 1e12 for k, v in totals.items()}


def _op_type(name: str) -> str:
    """'student/block3_dw/depthwise:DepthwiseConv2dNative' -> 'DepthwiseConv2dNative'; other events unchanged."""
    return name.rsplit(":", 1)[-1] if ":" in name and "/" in name.split(":")[0] else name


def print_op_times(totals: dict[str, float], top: int):
    total = sum(totals.values()) or 1.0
    print(f"[time_distill] self time by op type (all host threads, {total:.1f} s in all):")
    for name, sec in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * sec / total:5.1f}%  {sec:8.2f} s  {name}")


def split_step(scfg, dcfg, src, concat_fn, dec_fn, dims, args):
    """Images/s of the teachers' forward pass and of the student's training step (through the frozen decoder,
    the teacher-space loss), each alone on the same batch of faces, repeated for `args.split_seconds`."""
    import tensorflow as tf
    from face_transfer.student.losses import block_sq_loss
    from face_transfer.student.training import make_optimizer
    from face_transfer.student.model import build_student
    b = dcfg.batch_size
    images = tf.constant(src.images(0, b, "distill"))
    teachers, decoder = concat_fn(), dec_fn()
    forward = tf.function(lambda x: teachers(x, training=False))
    targets = forward(images)

    def rate(fn, *a):
        fn(*a)  # trace
        t0, n = time.time(), 0
        while time.time() - t0 < args.split_seconds:
            fn(*a)
            n += b
        return n / (time.time() - t0)

    out = {"teachers_forward": rate(forward, images)}
    for fused, xla in ((False, False), (True, False), (True, True)):
        student = build_student(scfg, train_fast=fused)
        opt = make_optimizer(dcfg)
        opt.build(student.trainable_variables)

        def step(x, t, student=student, opt=opt):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(block_sq_loss(decoder(student(x, training=True), training=False), t, dims))
            grads = tape.gradient(loss, student.trainable_variables)
            opt.apply_gradients(zip(grads, student.trainable_variables))
            return loss
        # the XLA variant: the same step compiled whole by XLA's CPU backend (fused kernels, no per-op dispatch)
        name = "student_step_" + ("fused_bn" if fused else "stock_bn") + ("_xla" if xla else "")
        out[name] = rate(tf.function(step, jit_compile=xla), images, targets)
    print(f"[time_distill] batch {b}, threads={args.threads or 'default'}: " +
          ", ".join(f"{k} {v:.0f} images/s" for k, v in out.items()), flush=True)
    return out


if __name__ == "__main__":
    main()
