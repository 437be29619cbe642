"""Are a zoo's teachers experts? Each teacher of a zoo folder (`make zoo-paper`) against the supervised control of a
finished run, on the teacher's own source tasks, probed as the run's evaluate stage probes (same eval sets, tasks,
splits and seeds).

The supervised control (the student's network trained on the five source tasks' labels) does not depend on the
teachers, so a rebuilt zoo can be checked against an earlier run's control before a whole benchmark: the margins
are what `teachers.source_margin_over_supervised` will read once `make bench` runs on that zoo. Writes
`<run_dir>/teacher_margins/<zoo folder name>.json`.

    .venv/bin/python -m benchmarks.teacher_margins --run_dir=runs/bench/paper --zoo=~/.cache/face-transfer/zoo-paper
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from benchmarks.ablate_distill import open_finished_run

CONTROL = "supervised_student"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run_dir", required=True, help="a finished run whose evaluate stage probed the supervised control")
    ap.add_argument("--zoo", required=True, help="a zoo folder (manifest.json + <teacher>/model.keras)")
    args = ap.parse_args(argv)

    from face_transfer.core.fileio import read_json, write_json
    from face_transfer.evaluation.probes import evaluate_all
    from face_transfer.stages import inputs
    from face_transfer.teachers.train import PRETRAINED_MANIFEST, install_pretrained, load_zoo_teacher, recorded_spec

    zoo = os.path.abspath(os.path.expanduser(args.zoo))
    _, run, out_root, _, _ = open_finished_run(args.run_dir, "teacher_margins")
    done = read_json(run.paths.transfer_results_json) if os.path.exists(run.paths.transfer_results_json) else {}
    if CONTROL not in done:
        raise SystemExit(f"--run_dir={args.run_dir}: {run.paths.transfer_results_json} holds no {CONTROL!r} results; "
                         "expected a finished run of a preset with the supervised control (paper)")
    manifest = read_json(os.path.join(zoo, PRETRAINED_MANIFEST))
    sources = {t.name: t.source_tasks for t in inputs.teacher_sources(run)}
    tasks = inputs.run_tasks(run)
    images, labels = inputs.load_eval_data(run)
    out = {"run_dir": run.dir, "zoo": zoo, "teachers": {}}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for name, entry in manifest["teachers"].items():
            own = [t for t in tasks if t.name in sources.get(name, ())]
            if not own:
                print(f"[margins] {name}: no source task of it in the run, skipped")
                continue
            # the same SHA-256 and spec checks a run makes before it uses a given teacher
            install_pretrained(recorded_spec(entry, zoo), zoo, os.path.join(tmp, name))
            teacher = load_zoo_teacher(os.path.join(tmp, name))
            sets = sorted({t.eval_set for t in own})
            feats = {s: teacher.embed(images[s]) for s in sets}
            res = evaluate_all({name: feats}, {s: labels[s] for s in sets}, own, run.cfg.probe)[name]
            out["teachers"][name] = {
                "steps_total": entry["record"].get("steps_total"), "metrics": entry["record"].get("metrics"),
                "source_scores": {t.name: res[t.name]["score_mean"] for t in own},
                "source_std": {t.name: res[t.name]["score_std"] for t in own},
                "control": {t.name: done[CONTROL][t.name]["score_mean"] for t in own},
                "margin": {t.name: res[t.name]["score_mean"] - done[CONTROL][t.name]["score_mean"] for t in own}}
    margins = [v for r in out["teachers"].values() for v in r["margin"].values()]
    out["min_source_margin_over_supervised"] = min(margins) if margins else None
    out["seconds"] = round(time.time() - t0, 1)
    path = os.path.join(out_root, f"{os.path.basename(zoo.rstrip(os.sep))}.json")
    write_json(path, out)
    for name, r in out["teachers"].items():
        for task, m in r["margin"].items():
            print(f"[margins] {name:>20} {task:>10}: teacher {r['source_scores'][task]:.1f} ± "
                  f"{r['source_std'][task]:.1f}, control {r['control'][task]:.1f}, margin {m:+.1f}")
    print(f"[margins] smallest margin {out['min_source_margin_over_supervised']:+.1f}; {path}")


if __name__ == "__main__":
    main()
