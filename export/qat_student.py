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

from trainers.common import define_verbose_flag, guarded, run_script  # noqa: E402  (one error boundary per script)

FLAGS = flags.FLAGS
define_verbose_flag()
flags.DEFINE_string("run_dir", None, "A run directory with a trained student (student/student.json).")
flags.DEFINE_string("out", None, "Output .tflite path (refuses to overwrite unless --overwrite).")
flags.DEFINE_boolean("overwrite", False, "Replace --out if it exists.")
flags.DEFINE_integer("steps", None, "QAT steps (default: the run config's export.qat_steps).")
flags.mark_flags_as_required(["run_dir", "out"])


@guarded
def main(argv):
    from face_transfer.core.runpaths import RunPaths
    from face_transfer.stages.export import qat_export
    cfg_path = RunPaths(FLAGS.run_dir).config_json
    if not os.path.exists(cfg_path):
        raise app.UsageError(f"--run_dir={FLAGS.run_dir}: no config.json (not a run directory)")
    if os.path.exists(FLAGS.out) and not FLAGS.overwrite:
        raise app.UsageError(f"--out={FLAGS.out} exists; pass --overwrite to replace it")
    size = qat_export(FLAGS.run_dir, FLAGS.out, FLAGS.steps)
    print(f"wrote {FLAGS.out} ({size:,} bytes)")


if __name__ == "__main__":
    run_script(main)
