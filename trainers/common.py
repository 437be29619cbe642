"""Flags shared by the trainers, and the one place flags become an ExperimentConfig."""
from __future__ import annotations

import dataclasses
import os

from absl import flags

FLAGS = flags.FLAGS


def define_run_flags():
    from face_transfer.configs import PRESETS
    from face_transfer.distribute import STRATEGIES
    flags.DEFINE_enum("preset", "demo", list(PRESETS), "Configuration preset.")
    flags.DEFINE_string("run_dir", None, "Run directory (created; resumed if it holds the same config).")
    flags.DEFINE_boolean("overwrite", False, "Replace an existing run directory with a different config.")
    flags.DEFINE_string("config_json", None, "A config.json to use instead of the preset (e.g. from a run dir).")
    flags.DEFINE_integer("seed", None, "Override the preset's seed.")
    flags.DEFINE_enum("strategy", None, list(STRATEGIES), "tf.distribute strategy (default: the preset's).")
    flags.DEFINE_integer("num_cpu_replicas", None, "With --strategy=mirrored and no GPU: split the CPU into N "
                         "logical devices (testing multi-replica code on a laptop).")
    flags.DEFINE_integer("code_dim", None, "Fusion code dimension d (= student embedding size).")
    flags.DEFINE_enum("distill_loss", None, ["l2", "cosine", "teacher_space"], "Distillation loss.")
    flags.DEFINE_integer("distill_steps", None, "Student distillation steps.")
    flags.DEFINE_integer("teacher_steps", None, "Training steps per zoo teacher.")
    flags.DEFINE_integer("batch_size", None, "Global batch size for teachers and student.")
    flags.DEFINE_float("student_width", None, "Student width multiplier.")
    flags.DEFINE_list("real_teachers", None, "Imported pretrained teachers to add to the ensemble "
                      "(names from face_transfer.teachers.real.REAL_TEACHERS; empty string for none).")
    flags.DEFINE_boolean("deterministic", False, "Enable TensorFlow op determinism (same seed and config -> "
                         "same result on the same machine; slower).")
    flags.DEFINE_boolean("zoo", True, "Train and use the preset's zoo teachers (--nozoo: real teachers only).")
    flags.mark_flag_as_required("run_dir")


def config_from_flags():
    """The preset (or --config_json) with the flag overrides applied; validated before any work."""
    from face_transfer.configs import ExperimentConfig, preset_config
    if FLAGS.config_json:
        if not os.path.exists(FLAGS.config_json):
            raise flags.ValidationError(f"--config_json={FLAGS.config_json}: no such file")
        cfg = ExperimentConfig.from_json(open(FLAGS.config_json).read())
    else:
        cfg = preset_config(FLAGS.preset)
    r = dataclasses.replace
    if FLAGS.seed is not None:
        cfg = r(cfg, seed=FLAGS.seed)
    if FLAGS.strategy:
        cfg = r(cfg, strategy=FLAGS.strategy)
    if FLAGS.code_dim is not None:
        from face_transfer.teachers.real import REAL_TEACHERS
        concat = sum(t.embedding_dim for t in cfg.teachers) + sum(REAL_TEACHERS[n]["dim"] for n in cfg.real_teachers)
        if not 1 <= FLAGS.code_dim < concat:
            raise flags.ValidationError(f"--code_dim={FLAGS.code_dim}: expected 1 <= d < {concat} (the "
                                        f"concatenated teacher dimension of preset {cfg.preset})")
        cfg = r(cfg, fusion=r(cfg.fusion, code_dim=FLAGS.code_dim), student=r(cfg.student, embedding_dim=FLAGS.code_dim))
    if FLAGS.distill_loss:
        cfg = r(cfg, distill=r(cfg.distill, loss=FLAGS.distill_loss))
    if FLAGS.distill_steps is not None:
        if FLAGS.distill_steps < 1:
            raise flags.ValidationError(f"--distill_steps={FLAGS.distill_steps}: expected >= 1")
        cfg = r(cfg, distill=r(cfg.distill, steps=FLAGS.distill_steps))
    if FLAGS.teacher_steps is not None:
        if FLAGS.teacher_steps < 1:
            raise flags.ValidationError(f"--teacher_steps={FLAGS.teacher_steps}: expected >= 1")
        cfg = r(cfg, teacher_train=r(cfg.teacher_train, steps=FLAGS.teacher_steps))
    if FLAGS.batch_size is not None:
        if FLAGS.batch_size < 1:
            raise flags.ValidationError(f"--batch_size={FLAGS.batch_size}: expected >= 1")
        cfg = r(cfg, distill=r(cfg.distill, batch_size=FLAGS.batch_size),
                teacher_train=r(cfg.teacher_train, batch_size=FLAGS.batch_size))
    if FLAGS.student_width is not None:
        if FLAGS.student_width <= 0:
            raise flags.ValidationError(f"--student_width={FLAGS.student_width}: expected > 0")
        cfg = r(cfg, student=r(cfg.student, width=FLAGS.student_width))
    if FLAGS.real_teachers is not None:
        from face_transfer.teachers.real import REAL_TEACHERS, available_real_teachers
        names = tuple(n for n in FLAGS.real_teachers if n)
        unknown = [n for n in names if n not in REAL_TEACHERS]
        if unknown:
            raise flags.ValidationError(f"--real_teachers: unknown teacher(s) {unknown}; allowed: {sorted(REAL_TEACHERS)}")
        missing = [n for n in names if n not in available_real_teachers()]
        if missing:
            raise flags.ValidationError(f"--real_teachers: {missing} not installed; "
                                        + "; ".join(REAL_TEACHERS[n]["pip"] for n in missing))
        cfg = r(cfg, real_teachers=names)
    if not FLAGS.zoo:
        cfg = r(cfg, teachers=())
    if not cfg.teachers and not cfg.real_teachers:
        raise flags.ValidationError("--nozoo with no --real_teachers leaves no teacher to distil from")
    run_dir = os.path.abspath(FLAGS.run_dir)
    parent = os.path.dirname(run_dir)
    probe = parent
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK) or \
            (os.path.exists(run_dir) and not (os.path.isdir(run_dir) and os.access(run_dir, os.W_OK))):
        raise flags.ValidationError(f"--run_dir={FLAGS.run_dir}: not a writable directory "
                                    f"({probe} is not a writable directory)")
    return cfg


def strategy_from_flags():
    from face_transfer.distribute import make_strategy
    if FLAGS.deterministic:
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    name = FLAGS.strategy or "default"
    return make_strategy(name, num_cpu_replicas=FLAGS.num_cpu_replicas)


def quiet_tensorflow():
    """Keep the console for stage headers and progress: TF's retracing chatter goes to ERROR only."""
    import logging

    import tensorflow as tf
    from absl import logging as absl_logging
    tf.get_logger().setLevel(logging.ERROR)
    absl_logging.set_verbosity(absl_logging.ERROR)


def main_until(stage: str):
    """The absl main of a stage script: run the pipeline up to `stage` (earlier stages when missing)."""
    def main(argv):
        from absl import app
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments {argv[1:]}")
        quiet_tensorflow()
        try:
            cfg = config_from_flags()
            strategy = strategy_from_flags()
        except (flags.ValidationError, ValueError) as e:  # bad flags: a message, no traceback, no work done
            raise app.UsageError(str(e)) from None
        from face_transfer.pipeline import run_pipeline  # after the strategy: logical CPUs come first
        out = run_pipeline(cfg, FLAGS.run_dir, overwrite=FLAGS.overwrite, strategy=strategy, until=stage,
                           flags_text=FLAGS.flags_into_string())
        if "report" in out:
            print("\n".join(out["report"]["summary_lines"]))
        return 0
    return main
