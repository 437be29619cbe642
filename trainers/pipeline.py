"""face-transfer: the main job, end to end, into one run directory (resumable; a finished stage is skipped):
data -> teachers -> cache -> fusion -> student -> evaluate -> export -> report.

Examples:
  face-transfer --preset=demo --run_dir=runs/demo          (SynthFaces, the embedded default)
  face-transfer --preset=demo --run_dir=runs/mine \\
      --teacher=id=models/face_id.keras,output=embedding,size=112,tasks=identity \\
      --teacher=expr=models/expr.onnx,output=feat,size=64,channels=1,scale=0.0078,offset=-1,tasks=expression \\
      --teacher=fer_expression \\
      --faces=photos/ --align_faces \\
      --tasks=celeba:data/celeba --tasks=fer2013:data/fer2013.csv --nosynth_tasks
(`python -m trainers.pipeline` is the same program.)
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402

from face_transfer.stages import stage_names  # noqa: E402
from trainers import common  # noqa: E402

common.define_run_flags()
flags.adopt_module_key_flags(common)  # --help lists the run flags, not only this script's
flags.DEFINE_enum("until", stage_names()[-1], list(stage_names()), "Stop after this stage.")


def main(argv):
    return common.main_until(flags.FLAGS.until)(argv)


def run():
    """Console-script entry point (`face-transfer --preset=demo --run_dir=...`)."""
    common.run_console(main, __doc__)


if __name__ == "__main__":
    common.run_script(main)
