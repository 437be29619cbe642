"""face-transfer-adapt: adapt a distilled student to your own labelled tasks and ship a new analyser, without
re-running the pipeline and without changing the original run.

Examples:
  face-transfer-adapt --student=runs/demo --tasks=folder_csv:data/shape/labels.csv --out=runs/demo_shape
  face-transfer-adapt --student=runs/demo/export --tasks=celeba:data/celeba --out=runs/celeba_heads \\
      --mode=finetune --finetune_steps=300
(`python -m trainers.adapt` is the same program.) --out receives analyzer_savedmodel/, analyzer_int8.tflite (with
metadata), analyzer.onnx, the browser page (when LiteRT.js is installed) and adapt.json (scores, forgetting, times).
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from face_transfer.adapt import MODES, AdaptConfig  # noqa: E402  (TensorFlow-free: the flags' defaults)
from trainers import common  # noqa: E402

DEFAULT = AdaptConfig()

flags.DEFINE_string("student", None, "A finished run directory, or a student folder (a run's export/, or the "
                    "--out of an earlier adaptation).")
flags.DEFINE_multi_string("tasks", None, "A labelled dataset whose columns become new heads (repeatable), as for "
                          f"face-transfer: {common.tasks_flag_syntax()}.")
flags.DEFINE_string("out", None, "A new folder for the adapted analyser (never the run directory).")
flags.DEFINE_enum("mode", DEFAULT.mode, list(MODES), "linear: heads on the frozen student's features; "
                  "finetune: heads first, then the student unfrozen at a lower learning rate, kept near its "
                  "frozen features so that the old heads keep working.")
flags.DEFINE_integer("finetune_steps", DEFAULT.finetune_steps, "Student updates in --mode=finetune.")
flags.DEFINE_float("finetune_learning_rate", DEFAULT.learning_rate, "The student's learning rate in --mode=finetune.")
flags.DEFINE_float("keep_weight", DEFAULT.keep_weight, "Weight of the term keeping the fine-tuned features near "
                   "the frozen ones (Learning without Forgetting).")
flags.DEFINE_integer("replay_faces", DEFAULT.replay_faces, "Faces of the run's own unlabelled source that the "
                     "keep term also sees in --mode=finetune (from a run directory; 0: the new images only).")
flags.DEFINE_integer("tune_stages", DEFAULT.tune_stages, "In --mode=finetune, train only the last N resolution "
                     "stages of the student (the earlier ones stay as distilled); 0: all of it.")
flags.DEFINE_boolean("replace_heads", False, "A new task named like an existing head replaces it (else an error).")
flags.DEFINE_integer("ceiling_steps", 0, "If > 0, also train the student's architecture from nothing on each new "
                     "task for this many steps and report its score (the ceiling).")
flags.DEFINE_boolean("overwrite", False, "Replace an earlier, different adaptation in --out.")
flags.mark_flags_as_required(["student", "tasks", "out"])
common.define_verbose_flag()
FLAGS = flags.FLAGS


@common.guarded
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}")
    common.quiet_tensorflow()
    from face_transfer import adapt
    from face_transfer.data.tasksets import parse_task_flag
    try:
        task_sets = [parse_task_flag(t) for t in FLAGS.tasks]
        cfg = adapt.AdaptConfig(mode=FLAGS.mode, finetune_steps=FLAGS.finetune_steps,
                                learning_rate=FLAGS.finetune_learning_rate, keep_weight=FLAGS.keep_weight,
                                replay_faces=FLAGS.replay_faces, tune_stages=FLAGS.tune_stages,
                                replace_heads=FLAGS.replace_heads)
        adapt.check_out_dir(FLAGS.out, FLAGS.student)
    except ValueError as e:
        raise app.UsageError(str(e), exitcode=common.EXIT_USAGE) from None
    rec = adapt.run_adapt(FLAGS.student, task_sets, FLAGS.out, cfg, overwrite=FLAGS.overwrite,
                          ceiling_steps=FLAGS.ceiling_steps)
    print(adapt.summary_lines(rec, FLAGS.out))
    return 0


def run():
    """Console-script entry point (`face-transfer-adapt --student=... --tasks=... --out=...`)."""
    common.run_console(main, __doc__)


if __name__ == "__main__":
    common.run_script(main)
