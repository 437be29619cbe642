"""Quantisation-aware int8 fine-tune of a run's distilled student, written as a .tflite file.

  python -m export.qat_student --run_dir=runs/demo --out=runs/demo/export/student_int8_qat.tflite

Runs in its own process because tensorflow-model-optimization flips the TF keras alias to legacy Keras for
the whole process (see face_transfer/deploy/qat.py). Targets are the same distillation targets as
the student's: the fused teacher's code of every fresh face.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("run_dir", None, "A run directory with a trained student (student/student.json).")
flags.DEFINE_string("out", None, "Output .tflite path (refuses to overwrite unless --overwrite).")
flags.DEFINE_boolean("overwrite", False, "Replace --out if it exists.")
flags.DEFINE_integer("steps", None, "QAT steps (default: the run config's export.qat_steps).")
flags.mark_flags_as_required(["run_dir", "out"])


def main(argv):
    import dataclasses

    import numpy as np

    from face_transfer import stages
    from face_transfer.configs import ExperimentConfig
    from face_transfer.data import synth
    from face_transfer.student.distill import load_student
    cfg_path = os.path.join(FLAGS.run_dir, "config.json")
    if not os.path.exists(cfg_path):
        raise app.UsageError(f"--run_dir={FLAGS.run_dir}: no config.json (not a run directory)")
    if os.path.exists(FLAGS.out) and not FLAGS.overwrite:
        raise app.UsageError(f"--out={FLAGS.out} exists; pass --overwrite to replace it")
    cfg = ExperimentConfig.from_json(open(cfg_path).read())
    run = stages.Run(FLAGS.run_dir, cfg)
    student = load_student(run.p("student"))
    code_fn, _, _ = stages._fused_teacher_fns(run)
    fused = code_fn()
    from face_transfer.deploy.qat import convert_qat_to_tflite, qat_finetune  # imports tfmot: after Keras 3 loads
    scfg = dataclasses.replace(cfg.student, embedding_dim=cfg.fusion.code_dim)
    bs = cfg.distill.batch_size

    def images_fn(step):
        return synth.render_faces(cfg.data.synth, np.arange(step * bs, (step + 1) * bs), stream="qat",
                                  domain=cfg.distill.domain)[0]

    steps = FLAGS.steps if FLAGS.steps is not None else cfg.export.qat_steps
    qat = qat_finetune(student, scfg, images_fn, lambda x: np.asarray(fused(x, training=False)), steps, bs,
                       cfg.export.qat_learning_rate)
    calib = synth.render_faces(cfg.data.synth, np.arange(cfg.export.calibration_images), stream="calibration",
                               domain="photo")[0]
    data = convert_qat_to_tflite(qat, calib)
    tmp = FLAGS.out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, FLAGS.out)
    print(f"wrote {FLAGS.out} ({len(data):,} bytes) after {steps} QAT steps")


if __name__ == "__main__":
    app.run(main)
