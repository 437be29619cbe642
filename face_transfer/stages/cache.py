"""Stage `cache`: the unlabelled faces of the run's source through every teacher, into a sharded
embedding cache (resumable; split across workers under MultiWorkerMirroredStrategy).
"""
from __future__ import annotations

from face_transfer.stages import inputs, register_stage
from face_transfer.stages.rundir import Run, header, summary

NAME = "cache"
WORKERS = "all"  # under multi-worker training every worker runs it (its share, or collectively)
DEPENDS_ON = ("data", "teachers")  # rebuilt upstream stages make this one stale


@register_stage
def run(run: Run, ctx) -> dict:
    from face_transfer.teachers.cache import build_embedding_cache
    src = inputs.image_source(run)
    n = src.count(run.cfg.data.cache_size)
    if n < 2:
        raise ValueError(f"the face source holds {n} usable face(s); the fusion needs at least 2")
    worker = ctx.worker
    header(f"embedding cache: {n} unlabelled faces ({src.kind}) through every teacher"
           + (f" (worker {worker[0] + 1} of {worker[1]})" if worker[1] > 1 else ""))
    teachers = inputs.load_teachers(run)

    def image_fn(idx):
        return src.images(int(idx[0]), int(idx[-1]) + 1, "fusion")

    manifest = build_embedding_cache(teachers, image_fn, n, run.paths.cache_dir,
                                     meta={"source": src.describe(), "stream": "fusion"}, worker=worker,
                                     shard_size=run.cfg.data.cache_shard_size)
    rate = manifest.get("images_per_s")
    summary(f"dims {manifest['dims']}" + (f", {rate:,.0f} images/s" if rate else " (already complete)"))
    return {**manifest, "outputs": [run.paths.cache_manifest], "artifacts": [run.paths.cache_dir],
            "reset": [run.paths.cache_dir]}
