"""Stage `fusion`: the auto-encoder from the standardised, concatenated teacher embeddings of the cache
to one compact code (the student's target).
"""
from __future__ import annotations

import time

from face_transfer.stages import register_stage
from face_transfer.stages.rundir import Run, header, summary

NAME = "fusion"
WORKERS = "chief"  # under multi-worker training only the chief runs it; the others wait for its record
DEPENDS_ON = ("cache",)  # rebuilt upstream stages make this one stale


@register_stage
def run(run: Run, ctx) -> dict:
    from face_transfer.fusion.autoencoder import train_fusion
    from face_transfer.teachers.cache import load_embedding_cache
    header(f"fusion: auto-encoder to a {run.cfg.fusion.code_dim}-d common embedding")
    _, embs = load_embedding_cache(run.paths.cache_dir)
    t0 = time.time()
    fusion = train_fusion(embs, run.cfg.fusion, run.paths.fusion_dir)
    rec = fusion.record
    summary(f"concat {rec['concat_dim']} -> code {rec['code_dim']} (x{rec['compression_ratio']:.1f}), "
            f"val R2 per teacher {({k: round(v, 3) for k, v in rec['val_r2_per_teacher'].items()})} "
            f"({time.time() - t0:.0f} s)")
    return {**rec, "outputs": [run.paths.fusion_json], "artifacts": [run.paths.fusion_dir],
            "reset": [run.paths.fusion_dir]}
