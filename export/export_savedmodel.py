"""Exports a trained student (optionally with its linear-probe task heads) as a SavedModel.

    python -m export.export_savedmodel --student_dir=runs/demo/student --out_dir=runs/demo/export/student
The student alone has two outputs, as in a run's export/: `embedding` (the code) and `features` (the
--student_view the run probes; face_transfer.deploy.savedmodel.build_student_export).
    python -m export.export_savedmodel --keras_model=s.keras --heads=probes.json --out_dir=export/analyzer
"""
import glob
import json
import os

from absl import app, flags

from trainers.common import define_verbose_flag, guarded, run_script  # noqa: E402  (one error boundary per script)

flags.DEFINE_string("student_dir", None, "Directory holding the trained student as exactly one *.keras file.")
flags.DEFINE_string("keras_model", None, "Path of the student .keras file (instead of --student_dir).")
flags.DEFINE_string("heads", None, "JSON file {task: linear-probe parameters}: export the multi-task analyser.")
flags.DEFINE_string("out_dir", None, "SavedModel directory to write.")
flags.DEFINE_boolean("overwrite", False, "Replace an existing --out_dir.")
flags.DEFINE_enum("student_view", "ladder", ["embedding", "ladder"], "Without --heads: what the `features` output "
                  "is, next to the code `embedding` (the run's config student_view; every preset probes the ladder).")
FLAGS = flags.FLAGS
define_verbose_flag()

LABELS_FILE = "labels.json"  # per-output kinds and class names, read by convert_tflite / infer_tflite


def find_keras_model(student_dir, keras_model):
    """The .keras file named by exactly one of --student_dir / --keras_model."""
    if bool(student_dir) == bool(keras_model):
        raise app.UsageError("give exactly one of --student_dir or --keras_model")
    if keras_model:
        if not os.path.isfile(keras_model) or not keras_model.endswith(".keras"):
            raise app.UsageError(f"--keras_model={keras_model}: expected an existing .keras file")
        return keras_model
    found = sorted(glob.glob(os.path.join(student_dir, "*.keras")))
    if len(found) != 1:
        raise app.UsageError(f"--student_dir={student_dir}: expected exactly one *.keras file, found {found or 'none'}")
    return found[0]


@guarded
def main(argv):
    del argv
    if not FLAGS.out_dir:
        raise app.UsageError("--out_dir is required")
    path = find_keras_model(FLAGS.student_dir, FLAGS.keras_model)
    heads = None
    if FLAGS.heads:
        if not os.path.isfile(FLAGS.heads):
            raise app.UsageError(f"--heads={FLAGS.heads}: no such file (expected JSON of linear-probe parameters)")
        with open(FLAGS.heads) as f:
            heads = json.load(f)
    import keras

    from face_transfer.deploy.savedmodel import analyzer_metadata, build_analyzer, build_student_export, export_savedmodel

    model = keras.models.load_model(path, compile=False)
    labels = {"embedding": {"kind": "embedding"}}
    if heads:
        model = build_analyzer(model, heads)
        labels.update(analyzer_metadata(heads))
    else:
        model = build_student_export(model, FLAGS.student_view)
        labels["features"] = {"kind": "embedding"}
    try:
        out = export_savedmodel(model, FLAGS.out_dir, overwrite=FLAGS.overwrite)
    except FileExistsError as e:
        raise app.UsageError(f"--out_dir: {e} (--overwrite)") from e
    with open(os.path.join(out, LABELS_FILE), "w") as f:
        json.dump(labels, f, indent=2)
    print(f"wrote {out} (outputs: {', '.join(labels)})")


def run():
    """Console-script entry point."""
    from trainers.common import run_console
    run_console(main, __doc__)


if __name__ == "__main__":
    run_script(main)
