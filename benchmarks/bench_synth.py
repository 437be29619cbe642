"""Throughput benchmark of the SynthFaces generator (faces per second on one CPU core at 64x64).
Run as `python -m benchmarks.bench_synth`; prints JSON."""
import json
import os
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402  (thread variables must be set before numpy loads its BLAS)


def bench_synth(n: int = 4096, batch: int = 256, image_size: int = 64, domain: str = "photo",
                repeats: int = 3) -> dict:
    """Render n faces in batches of `batch` on one thread, `repeats` times.

    faces/s is measured on process CPU time: with one thread that is time on one core, and it does not
    count waiting for a core shared with other jobs. The best repeat is the headline (least disturbed by
    neighbours competing for caches and memory bandwidth); the median and wall-clock rate sit next to it."""
    from threadpoolctl import threadpool_limits

    from face_transfer.data.synth import SynthConfig, render_faces

    cfg = SynthConfig(image_size=image_size)
    rates, walls = [], []
    with threadpool_limits(limits=1):
        render_faces(cfg, np.arange(min(batch, 64)), stream="bench_warmup", domain=domain)
        for _ in range(repeats):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for start in range(0, n, batch):
                render_faces(cfg, np.arange(start, min(start + batch, n)), stream="bench", domain=domain)
            rates.append(n / (time.process_time() - cpu0))
            walls.append(n / (time.perf_counter() - wall0))
    return {
        "synth.faces_per_s_per_core": round(max(rates), 1),
        "synth.faces_per_s_per_core_median": round(float(np.median(rates)), 1),
        "synth.faces_per_s_wall": round(max(walls), 1),
        "synth.image_size": image_size,
        "synth.batch": batch,
        "synth.domain": domain,
    }


if __name__ == "__main__":
    print(json.dumps(bench_synth(), indent=2))
