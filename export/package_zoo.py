"""Packages a run's trained zoo teachers as pretrained teachers (manifest.json + <name>/model.keras), which a
config then uses instead of training them (`--teacher_pretrained=<dir>`, or `package` for face_transfer/assets/zoo).

    python -m trainers.pipeline --preset=demo --run_dir=runs/zoo --until=teachers --teacher_steps=1000 \\
        --teacher_pretrained=
    python -m export.package_zoo --run_dir=runs/zoo --out=face_transfer/assets/zoo

One teacher retrained (a run with `--teacher=zoo:NAME`), the rest of a zoo kept:

    python -m export.package_zoo --run_dir=runs/zoo_age --update=<zoo dir> --out=<new zoo dir>
"""
import os
import sys

from absl import app, flags

from trainers.common import define_verbose_flag, guarded, run_script  # noqa: E402  (one error boundary per script)

flags.DEFINE_string("run_dir", None, "A run whose teachers stage finished.")
flags.DEFINE_string("out", None, "Where to write the pretrained zoo (its manifest.json and model files).")
flags.DEFINE_boolean("overwrite", False, "Replace an existing pretrained zoo in --out.")
flags.DEFINE_string("update", None, "A pretrained zoo (a directory, or 'package') to update: --out gets its other "
                    "teachers (checked against its manifest) and the run's in place of the same-named ones, so that "
                    "one retrained teacher (`--teacher=zoo:NAME` in the run) gives a whole zoo.")
FLAGS = flags.FLAGS
define_verbose_flag()


@guarded
def main(argv):
    del argv
    from face_transfer.configs import ConfigError, ExperimentConfig
    from face_transfer.core.errors import CorruptArtifactError
    from face_transfer.core.runpaths import RunPaths
    from face_transfer.teachers.train import PRETRAINED_MANIFEST, carried_teachers, package_pretrained
    if not FLAGS.run_dir or not FLAGS.out:
        raise app.UsageError("give --run_dir (a run whose teachers are trained) and --out")
    try:
        cfg = ExperimentConfig.from_file(RunPaths(FLAGS.run_dir).config_json)
    except ConfigError as e:
        raise app.UsageError(f"--run_dir={FLAGS.run_dir}: {e}") from None
    paths = RunPaths(FLAGS.run_dir)
    dirs = {s.name: paths.teacher_dir(s.name) for s in cfg.teachers}
    missing = [n for n in dirs if not os.path.isfile(paths.teacher_json(n))]
    if not dirs or missing:
        raise app.UsageError(f"--run_dir={FLAGS.run_dir}: zoo teachers not trained: {missing or 'the config has none'}")
    if os.path.exists(os.path.join(FLAGS.out, PRETRAINED_MANIFEST)) and not FLAGS.overwrite:
        raise app.UsageError(f"--out={FLAGS.out}: already holds a pretrained zoo; pass --overwrite to replace it")
    note = (f"trained by `python -m trainers.pipeline` in {FLAGS.run_dir} ({cfg.teacher_train.steps} steps each: "
            f"{', '.join(dirs)}; "
            f"preset {cfg.preset}" + (f", warm-started from {cfg.teacher_train.warm_start}"
                                      if cfg.teacher_train.warm_start else "") + ")")
    if FLAGS.update is not None:
        if not FLAGS.update.strip():
            raise app.UsageError("--update= is empty: give the zoo folder to update (or 'package')")
        try:  # the zoo to update, checked before anything is written
            carried_teachers(FLAGS.update, FLAGS.out, cfg.data.synth, dirs)
        except CorruptArtifactError:
            raise
        except (ValueError, FileNotFoundError) as e:
            raise app.UsageError(f"--update={FLAGS.update}: {e}") from None
    manifest = package_pretrained(dirs, FLAGS.out, cfg.data.synth, base=FLAGS.update, note=note)
    for name, e in manifest["teachers"].items():
        print(f"{name}: {e['bytes']:,} bytes, {e['record']['metrics']}", file=sys.stderr)
    print(os.path.join(FLAGS.out, PRETRAINED_MANIFEST))


if __name__ == "__main__":
    run_script(main)
