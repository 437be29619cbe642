"""The main job, end to end: synthetic faces -> teachers -> fusion -> student -> evaluation -> export.

  python -m trainers.pipeline --preset=demo --run_dir=runs/demo     (or the console script `face-transfer`)
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

from trainers import common  # noqa: E402

common.define_run_flags()
flags.DEFINE_enum("until", "report", ["data", "teachers", "cache", "fusion", "student", "evaluate", "export",
                                      "report"], "Stop after this stage.")


def main(argv):
    return common.main_until(flags.FLAGS.until)(argv)


def run():
    """Console-script entry point (`face-transfer --preset=demo --run_dir=...`)."""
    app.run(main, argv=sys.argv)


if __name__ == "__main__":
    run()
