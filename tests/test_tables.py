"""Results tables (JSON, Markdown), the within-noise rule, and the evaluation plots (PNG files)."""
import json

import numpy as np
import pytest

from face_transfer.data.tasks import TASKS
from face_transfer.evaluation import plots, tables

TASK_LIST = [TASKS["expression"], TASKS["age"], TASKS["verification"], TASKS["landmarks"], TASKS["glasses"]]


def _entry(scores, raw):
    scores = [float(s) for s in scores]
    return {"score_mean": float(np.mean(scores)), "score_std": float(np.std(scores, ddof=1)),
            "scores": scores, "raw": raw, "raw_std": {k: 0.01 for k in raw}, "hparams": {}}


@pytest.fixture()
def results():
    return {
        "student": {
            "expression": _entry([80, 81, 82], {"accuracy": 0.81}),
            "age": _entry([60, 61, 59], {"mae": 4.1, "r2": 0.6}),
            "verification": _entry([90, 90.5, 91], {"accuracy": 0.905, "auc": 0.95}),
            "landmarks": _entry([70, 71, 72], {"nme": 0.04, "nme_mean_shape": 0.1}),
            "glasses": _entry([95, 96, 97], {"accuracy": 0.96}),
        },
        "concat": {
            "expression": _entry([80.5, 81.5, 79.5], {"accuracy": 0.805}),  # within noise of student
            "age": _entry([70, 71, 72], {"mae": 3.5, "r2": 0.71}),
            "verification": _entry([50, 51, 49], {"accuracy": 0.5, "auc": 0.5}),
            "landmarks": _entry([20, 21, 22], {"nme": 0.08, "nme_mean_shape": 0.1}),
            "glasses": _entry([60, 61, 62], {"accuracy": 0.61}),
        },
        "pixels": {  # a representation missing a task still renders
            "expression": _entry([30, 31, 29], {"accuracy": 0.3}),
        },
    }


def test_within_noise_rule():
    assert tables.within_noise([80, 81, 82], [80.5, 81.5, 79.5])
    assert not tables.within_noise([80, 81, 82], [90, 91, 92])
    assert not tables.within_noise([80], [81])  # one seed: no noise estimate, different is different
    assert tables.within_noise([80], [80])
    with pytest.raises(ValueError, match="non-empty"):
        tables.within_noise([], [1.0])


def test_json_is_serialisable_and_complete(results):
    out = tables.results_table_json(results, TASK_LIST, {"seeds": [0, 1, 2], "note": "test"})
    text = json.dumps(out, allow_nan=False)
    back = json.loads(text)
    assert back["meta"]["seeds"] == [0, 1, 2]
    assert back["representations"] == ["student", "concat", "pixels"]
    assert back["results"]["concat"]["age"]["raw"]["mae"] == 3.5
    assert back["group_means"]["student"]["mean_source"] == pytest.approx(np.mean([81, 60]))
    assert back["group_means"]["pixels"]["mean_novel"] is None  # no novel task for pixels: NaN -> null
    assert back["best"]["expression"] == {"best": "student", "within_noise": ["concat"]}
    assert {t["name"] for t in back["tasks"]} == {t.name for t in TASK_LIST}


def test_markdown_lists_every_task_rep_and_marks_best(results):
    md = tables.results_table_markdown(results, TASK_LIST, reps_order=["concat", "student", "pixels"])
    for t in TASK_LIST:
        assert f"| {t.name} |" in md
    for r in results:
        assert r in md
    assert md.index("concat") < md.index("student")  # the requested column order
    age_row = next(line for line in md.splitlines() if line.startswith("| age | source"))
    assert "**71.0 ± 1.0**" in age_row and "60.0 ± 1.0" in age_row
    assert "| age | mae (years) |" in md and "**3.50 ± 0.01**" in md  # lower MAE is the better raw value
    for label in ("mean (source tasks)", "mean (novel tasks)", "mean (all tasks)"):
        assert label in md
    assert "expression: student ≈ concat" in md
    assert "—" in md  # pixels has no age result
    with pytest.raises(KeyError, match="nope"):
        tables.results_table_markdown(results, TASK_LIST, reps_order=["nope"])


def _is_png(path):
    with open(path, "rb") as f:
        head = f.read(8)
    return head == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(results, tmp_path):
    bars = plots.plot_task_bars(results, TASK_LIST, str(tmp_path / "sub" / "bars.png"))
    curve = plots.plot_compression_curve(
        {"d": [16, 32, 64, 128], "ae": [50, 60, 65, 66], "ae_std": [1, 1, 1, 1], "pca": [40, 50, 58, 63],
         "random_projection": [30, 40, 50, 57], "concat": 64.0, "concat_dim": 1472, "concat_std": 0.5},
        str(tmp_path / "curve.png"))
    rng = np.random.default_rng(0)
    emb = plots.plot_embedding_2d(rng.normal(size=(100, 8)), rng.integers(0, 3, 100),
                                  str(tmp_path / "emb.png"), "student code by expression")
    emb_c = plots.plot_embedding_2d(rng.normal(size=(100, 8)), rng.normal(size=100),
                                    str(tmp_path / "emb_c.png"), "student code by age")
    for p in (bars, curve, emb, emb_c):
        assert _is_png(p) and (tmp_path / p).stat().st_size > 2000
    with pytest.raises(ValueError, match="'ae'"):
        plots.plot_compression_curve({"d": [16, 32], "ae": [1.0]}, str(tmp_path / "bad.png"))


def test_ceiling_summary_percentages_and_unsolvable_tasks(results):
    res = dict(results)
    res["pixels"] = {**results["pixels"], "glasses": _entry([96, 95, 97], {"accuracy": 0.96}),
                     "age": _entry([10, 11, 12], {"mae": 9.0, "r2": 0.1})}
    res["ceiling"] = {
        "expression": _entry([90, 91, 92], {"accuracy": 0.91}),
        "age": _entry([80, 80, 80], {"mae": 3.0, "r2": 0.8}),
        "glasses": _entry([96, 96, 96], {"accuracy": 0.96}),  # no better than pixels: nothing measured there
    }
    s = tables.ceiling_summary(res, TASK_LIST, ["student", "concat", "pixels"])
    assert s["covered_tasks"] == ["expression", "age", "glasses"]
    assert s["per_task"]["age"]["pct"]["student"] == pytest.approx(100 * 60 / 80)
    assert s["per_task"]["age"]["solvable"] is True and s["per_task"]["glasses"]["solvable"] is False
    assert s["unsolvable"] == ["glasses"]
    novel = s["groups"]["novel"]  # glasses is the only novel task the ceiling covers
    assert novel["tasks"] == 1 and novel["pct"]["student"] == pytest.approx(100 * 96 / 96)
    src = s["groups"]["source"]
    assert src["ceiling"] == pytest.approx((91 + 80) / 2)
    assert src["pct"]["concat"] == pytest.approx(100 * (80.5 + 71) / 2 / src["ceiling"])
    assert src["pct"]["pixels"] == pytest.approx(100 * (30 + 11) / 2 / src["ceiling"])
    del res["pixels"]["age"]  # a representation missing a covered task gets no group percentage
    assert "pixels" not in tables.ceiling_summary(res, TASK_LIST, ["student", "pixels"])["groups"]["source"]["pct"]
    md = tables.ceiling_table_markdown(s, res, ["student", "concat"])
    assert "| glasses | novel | 96.0 ± 0.0 |" in md and "**no**" in md and "glasses." in md
    # the best other representation on expression is the student (81), still under the ceiling (91)
    assert s["ceiling_below"] == [] and s["per_task"]["expression"]["best_other"] == "student"
    weak = dict(res, ceiling={**res["ceiling"], "age": _entry([5, 5, 5], {"mae": 9.9, "r2": 0.05})},
                pixels={**res["pixels"], "age": _entry([10, 11, 12], {"mae": 9.0, "r2": 0.1})})
    w = tables.ceiling_summary(weak, TASK_LIST, ["student", "concat", "pixels"])
    # the ceiling loses to pixels on age, but concat (71) and the student (60) beat pixels (11): solvable,
    # and the ceiling is under-trained there
    assert w["per_task"]["age"]["solvable"] is True and w["ceiling_below"] == ["age"]
    assert "under-trained there): age." in tables.ceiling_table_markdown(w, weak, ["student"])
    with pytest.raises(KeyError, match="ceiling"):
        tables.ceiling_summary(results, TASK_LIST, ["student"])


def test_trimmed_mean_leaves_out_the_students_best_novel_tasks_for_every_representation():
    from face_transfer.stages.report import TRIM_BEST, trimmed_means
    novel = [f"n{i}" for i in range(TRIM_BEST + 3)]
    tasks = [{"name": "src", "group": "source"}] + [{"name": t, "group": "novel"} for t in novel]
    student = {t: {"score_mean": 10.0 * i} for i, t in enumerate(novel)}  # n7..n3 are the student's best five
    concat = {t: {"score_mean": 50.0} for t in novel}
    student["src"] = concat["src"] = {"score_mean": 99.0}
    out = trimmed_means({"tasks": tasks, "results": {"student": student, "concat": concat}})
    assert out["transfer.mean_novel_trimmed.left_out"] == ["n7", "n6", "n5", "n4", "n3"]
    assert out["transfer.mean_novel_trimmed.student"] == 10.0  # mean of 0, 10, 20
    assert out["transfer.mean_novel_trimmed.concat"] == 50.0
    assert trimmed_means({"tasks": tasks[:3], "results": {"student": student}}) == {}  # too few novel tasks


def test_source_margins_compare_each_teacher_with_the_supervised_control_on_its_own_source_tasks():
    from face_transfer.stages.report import source_margins
    tasks = [{"name": n, "group": "source"} for n in ("identity", "age", "gender")] + [{"name": "hat", "group": "novel"}]
    sc = lambda **kw: {t: {"score_mean": v} for t, v in kw.items()}  # noqa: E731
    results = {"recognition": sc(identity=80.0, age=10.0, gender=50.0, hat=40.0),
               "agegender": sc(identity=30.0, age=60.0, gender=95.0, hat=30.0),
               "supervised_student": sc(identity=75.0, age=64.0, gender=90.0, hat=50.0)}
    sources = {"recognition": ("identity",), "agegender": ("age", "gender"), "user_file": ()}
    out = source_margins({"tasks": tasks, "results": results}, sources)
    # only each teacher's own source tasks count; a teacher without declared source tasks has no row
    assert out["teachers.source_margin_over_supervised"] == {"recognition": {"identity": 5.0},
                                                             "agegender": {"age": -4.0, "gender": 5.0}}
    assert out["teachers.min_source_margin_over_supervised"] == -4.0
    assert out["transfer.source_scores.supervised_student"] == {"identity": 75.0, "age": 64.0, "gender": 90.0}
    # without a supervised control in the run: the per-task source scores only
    del results["supervised_student"]
    out = source_margins({"tasks": tasks, "results": results}, sources)
    assert "teachers.min_source_margin_over_supervised" not in out and "transfer.source_scores.recognition" in out


def test_flop_utilisation_is_measured_against_the_cores_the_student_trained_on():
    from face_transfer.stages.report import distill_flop_utilisation
    # 100 images/s of a 400-MFLOP ensemble and a 10-MFLOP student: 2 * (400 + 30) MFLOP * 100 = 86 GFLOP/s
    gf, one = distill_flop_utilisation(100.0, 400.0, 10.0, gflops_one_thread=100.0, threads=1)
    assert abs(gf - 86.0) < 1e-9 and abs(one - 0.86) < 1e-9
    _, two = distill_flop_utilisation(100.0, 400.0, 10.0, gflops_one_thread=100.0, threads=2)
    assert abs(two - one / 2) < 1e-12  # the same throughput on twice the cores is half the utilisation
    _, zero = distill_flop_utilisation(100.0, 400.0, 10.0, gflops_one_thread=100.0, threads=0)
    assert zero == one  # no thread count recorded: at least one core
