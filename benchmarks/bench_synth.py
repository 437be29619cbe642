"""Throughput benchmark of the SynthFaces generator (faces per second on one CPU core at 64x64).
Run as `python -m benchmarks.bench_synth`; prints JSON."""
import json
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (thread variables must be set before numpy loads its BLAS)


def bench_synth(n: int = 4096, batch: int = 256, image_size: int = 64, domain: str = "photo") -> dict:
    """Render n faces in batches of `batch` on one thread. faces/s is measured on process CPU time (one
    thread, so it is time on one core and does not count waiting for a core shared with other jobs);
    wall-clock faces/s is reported next to it."""
    from threadpoolctl import threadpool_limits

    from face_transfer.data.synth import SynthConfig, render_faces

    cfg = SynthConfig(image_size=image_size)
    with threadpool_limits(limits=1):
        render_faces(cfg, np.arange(min(batch, 64)), stream="bench_warmup", domain=domain)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        done = 0
        while done < n:
            idx = np.arange(done, min(done + batch, n))
            render_faces(cfg, idx, stream="bench", domain=domain)
            done += len(idx)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "synth.faces_per_s_per_core": round(n / cpu, 1),
        "synth.faces_per_s_wall": round(n / wall, 1),
        "synth.image_size": image_size,
        "synth.batch": batch,
        "synth.domain": domain,
    }


if __name__ == "__main__":
    print(json.dumps(bench_synth(), indent=2))
