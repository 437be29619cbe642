"""Linear probes on hand-built features whose answer is known: informative -> high, random -> chance."""
import numpy as np
import pytest

from face_transfer.data.tasks import Task
from face_transfer.evaluation import probes
from face_transfer.evaluation.probes import ProbeConfig

N = 600
CFG = ProbeConfig(seeds=(0, 1), verification_pairs=400)


def _task(name, labels, kind, metric="accuracy", num_classes=None, source=False, eval_set="photo"):
    labels = (labels,) if isinstance(labels, str) else tuple(labels)
    return Task(name, labels, kind, metric, eval_set, source, num_classes)


def _landmarks(rng, n):
    base = np.array([[0.35, 0.4], [0.65, 0.4], [0.5, 0.55], [0.38, 0.7], [0.62, 0.7]])
    shift = rng.normal(0, 0.05, (n, 1, 2))  # head translation moves all five points together
    return (base + shift + rng.normal(0, 0.01, (n, 5, 2))).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    labels = {
        "cls": rng.integers(0, 4, N),
        "identity": rng.integers(0, 40, N).astype(np.int64),
        "yaw": rng.uniform(-60, 60, N).astype(np.float32),
        "pitch": rng.uniform(-30, 30, N).astype(np.float32),
        "landmarks": _landmarks(rng, N),
    }
    id_code = rng.normal(size=(40, 16))
    informative = np.concatenate([
        np.eye(4)[labels["cls"]] * 3,
        id_code[labels["identity"]],
        np.stack([labels["yaw"] / 60, labels["pitch"] / 30], 1),
        labels["landmarks"].reshape(N, 10) * 20,
    ], axis=1)
    informative = informative + 0.1 * rng.normal(size=informative.shape)
    return labels, informative.astype(np.float32), rng.normal(size=(N, 32)).astype(np.float32)


def test_split_indices_deterministic_disjoint_and_complete():
    tr, va, te = probes.split_indices(1000, 3, ProbeConfig())
    assert (len(tr), len(va), len(te)) == (600, 200, 200)
    assert len(set(tr) | set(va) | set(te)) == 1000
    again = probes.split_indices(1000, 3, ProbeConfig())
    for a, b in zip((tr, va, te), again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(tr, probes.split_indices(1000, 4, ProbeConfig())[0])
    capped = probes.split_indices(1000, 3, ProbeConfig(max_train=50))
    np.testing.assert_array_equal(capped[0], tr[:50])
    np.testing.assert_array_equal(capped[1], va)


def test_config_and_split_reject_bad_input():
    with pytest.raises(ValueError, match="train_frac"):
        ProbeConfig(train_frac=0.9, val_frac=0.2)
    with pytest.raises(ValueError, match="n=3"):
        probes.split_indices(3, 0, ProbeConfig())


def test_classification_informative_vs_random(data):
    labels, good, rand = data
    task = _task("cls", "cls", "classification", num_classes=4)
    r = probes.probe_task(task, good, labels, 0, CFG)
    assert r["accuracy"] > 0.95 and r["score"] == pytest.approx(100 * r["accuracy"])
    assert r["C"] in CFG.c_grid
    chance = probes.evaluate_representation({"photo": rand}, {"photo": labels}, [task], CFG)["cls"]
    assert abs(chance["score_mean"] - 25) < 12, chance


def test_regression_linear_vs_unrelated(data):
    labels, good, rand = data
    task = _task("pose", ("yaw", "pitch"), "regression", metric="mae_deg")
    r = probes.probe_task(task, good, labels, 0, CFG)
    assert r["r2"] > 0.95 and r["score"] > 95
    assert r["mae"] < 5  # degrees, mean over yaw and pitch (their ranges are 120 and 60 degrees)
    bad = probes.probe_task(task, rand, labels, 0, CFG)
    assert bad["score"] < 8 and bad["mae"] > 12


def test_regression_ignores_nan_labels(data):
    labels, good, _ = data
    yaw = labels["yaw"].copy()
    yaw[::7] = np.nan
    r = probes.probe_task(_task("yaw", "yaw", "regression"), good, {**labels, "yaw": yaw}, 1, CFG)
    assert np.isfinite(r["mae"]) and r["r2"] > 0.95


def test_verification_identity_embedding_vs_random(data):
    labels, good, rand = data
    task = _task("verif", "identity", "verification")
    rng = np.random.default_rng(2)
    embedding = rng.normal(size=(40, 16))[labels["identity"]] + 0.3 * rng.normal(size=(N, 16))
    r = probes.probe_task(task, embedding, labels, 0, CFG)
    assert r["accuracy"] > 0.9 and r["auc"] > 0.95
    # Cosine has no learned weights: identity dimensions diluted among unrelated ones score lower.
    assert probes.probe_task(task, good, labels, 0, CFG)["accuracy"] < r["accuracy"]
    bad = probes.probe_task(task, rand, labels, 0, CFG)
    assert 0.4 < bad["accuracy"] < 0.6 and 0.4 < bad["auc"] < 0.6


def test_verification_pairs_are_balanced_valid_and_deterministic():
    ids = np.repeat(np.arange(10), 5)
    a, b, same = probes.verification_pairs(ids, 101, np.random.default_rng(0))
    assert same.sum() == 50 and (~same).sum() == 51
    assert np.all(ids[a[same]] == ids[b[same]]) and np.all(a[same] != b[same])
    assert np.all(ids[a[~same]] != ids[b[~same]])
    a2, b2, _ = probes.verification_pairs(ids, 101, np.random.default_rng(0))
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    with pytest.raises(ValueError, match="identity"):
        probes.verification_pairs(np.arange(10), 10, np.random.default_rng(0))


def test_best_threshold_separates_separable_scores():
    sim = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.75])
    same = np.array([True, True, True, False, False, False])
    t = probes.best_threshold(sim, same)
    assert 0.2 < t < 0.7 or 0.75 < t <= 0.8  # both cuts misclassify exactly one pair
    assert np.mean((sim >= t) == same) == pytest.approx(5 / 6)
    clean = np.array([0.9, 0.8, 0.3, 0.1])
    t = probes.best_threshold(clean, np.array([True, True, False, False]))
    assert 0.3 < t < 0.8


def test_landmarks_far_below_mean_shape(data):
    labels, good, rand = data
    task = _task("lm", "landmarks", "landmarks", metric="nme")
    r = probes.probe_task(task, good, labels, 0, CFG)
    assert r["nme"] < 0.5 * r["nme_mean_shape"] and r["score"] > 50
    # The mean-shape baseline is what its name says.
    tr, _, te = probes.split_indices(N, 0, CFG)
    gt = labels["landmarks"][te].astype(np.float64)
    pred = labels["landmarks"][tr].astype(np.float64).mean(axis=0)
    iod = np.linalg.norm(gt[:, 0] - gt[:, 1], axis=-1)
    expected = np.mean(np.linalg.norm(pred - gt, axis=-1).mean(axis=1) / iod)
    assert r["nme_mean_shape"] == pytest.approx(expected, rel=1e-6)
    bad = probes.probe_task(task, rand, labels, 0, CFG)
    assert bad["score"] < 15


def test_pca_projection_above_max_dim_is_exact_for_ridge(data):
    labels, good, _ = data
    rng = np.random.default_rng(1)
    wide = np.concatenate([good, rng.normal(size=(N, 400)).astype(np.float32)], axis=1)  # 442-d
    task = _task("pose", ("yaw", "pitch"), "regression")
    full = probes.probe_task(task, wide, labels, 0, ProbeConfig(max_dim=None))
    projected = probes.probe_task(task, wide, labels, 0, ProbeConfig(max_dim=400))  # n_train=360 < 400
    assert projected["r2"] == pytest.approx(full["r2"], abs=1e-4)
    assert projected["alpha"] == full["alpha"]


def test_evaluate_representation_aggregates_seeds(data):
    labels, good, _ = data
    tasks = [_task("cls", "cls", "classification", num_classes=4, source=True),
             _task("pose", ("yaw", "pitch"), "regression", metric="mae_deg"),
             _task("verif", "identity", "verification")]
    res = probes.evaluate_representation({"photo": good}, {"photo": labels}, tasks, CFG)
    assert set(res) == {"cls", "pose", "verif"}
    for name, r in res.items():
        assert len(r["scores"]) == len(CFG.seeds)
        assert r["score_mean"] == pytest.approx(np.mean(r["scores"]))
        assert r["score_std"] == pytest.approx(np.std(r["scores"], ddof=1))
    assert set(res["pose"]["raw"]) == {"mae", "r2"} and set(res["verif"]["raw"]) == {"accuracy", "auc"}
    assert res["cls"]["hparams"]["C"][0] in CFG.c_grid
    # The same seed gives the same number when a task is probed alone (shared split, no hidden state).
    alone = probes.probe_task(tasks[1], good, labels, CFG.seeds[1], CFG)
    assert alone["score"] == pytest.approx(res["pose"]["scores"][1])


def test_group_means_average_per_seed_then_over_seeds():
    tasks = [_task("s", "x", "classification", source=True), _task("n1", "x", "classification"),
             _task("n2", "x", "classification")]
    res = {"s": {"scores": [90.0, 80.0]}, "n1": {"scores": [10.0, 20.0]}, "n2": {"scores": [30.0, 60.0]}}
    g = probes.group_means(res, tasks)
    assert g["mean_source"] == pytest.approx(85.0) and g["std_source"] == pytest.approx(np.std([90, 80], ddof=1))
    assert g["scores_novel"] == pytest.approx([20.0, 40.0])
    assert g["mean_novel"] == pytest.approx(30.0) and g["std_novel"] == pytest.approx(np.std([20, 40], ddof=1))
    assert g["mean_all"] == pytest.approx(np.mean([130 / 3, 160 / 3]))


def test_evaluate_all_prints_progress(data, capsys):
    labels, good, rand = data
    tasks = [_task("cls", "cls", "classification", num_classes=4)]
    cfg = ProbeConfig(seeds=(0,))
    out = probes.evaluate_all({"good": {"photo": good}, "random": {"photo": rand}}, {"photo": labels},
                              tasks, cfg)
    assert list(out) == ["good", "random"]
    assert out["good"]["cls"]["score_mean"] > out["random"]["cls"]["score_mean"] + 40
    printed = capsys.readouterr().out
    assert "good" in printed and "random" in printed


def test_evaluate_all_in_parallel_processes_gives_the_serial_results(data):
    labels, good, rand = data
    tasks = [_task("cls", "cls", "classification", num_classes=4)]
    cfg = ProbeConfig(seeds=(0, 1))
    reps = {"good": {"photo": good}, "random": {"photo": rand}, "half": {"photo": good[:, : good.shape[1] // 2]}}
    serial = probes.evaluate_all(reps, {"photo": labels}, tasks, cfg, progress=False, workers=1)
    parallel = probes.evaluate_all(reps, {"photo": labels}, tasks, cfg, progress=False, workers=2)
    assert list(parallel) == list(reps)  # the caller's order, whatever order the workers finish in
    for name in reps:
        assert parallel[name]["cls"]["scores"] == serial[name]["cls"]["scores"]
    assert probes.probe_workers(3, 8) == 3 and probes.probe_workers(5, 2) == 2 and probes.probe_workers(1) == 1


def test_probe_workers_do_not_re_import_the_parents_main_module():
    """A spawned worker re-imports the parent's __main__ (trainers.pipeline loads TensorFlow: seconds per worker);
    while the probe workers start, the main module is hidden from multiprocessing's preparation data."""
    import sys
    from multiprocessing import spawn
    main = sys.modules["__main__"]
    before = (getattr(main, "__spec__", None), getattr(main, "__file__", None))
    with probes.main_module_hidden():
        prep = spawn.get_preparation_data("probe-worker")
        assert "init_main_from_name" not in prep and "init_main_from_path" not in prep
    assert (getattr(main, "__spec__", None), getattr(main, "__file__", None)) == before


def test_bad_input_names_what_is_wrong(data):
    labels, good, _ = data
    task = _task("cls", "cls", "classification")
    with pytest.raises(KeyError, match="'nope'"):
        probes.probe_task(_task("t", "nope", "classification"), good, labels, 0, CFG)
    with pytest.raises(ValueError, match="rows"):
        probes.probe_task(task, good[:-1], labels, 0, CFG)
    nan = good.copy()
    nan[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        probes.probe_task(task, nan, labels, 0, CFG)
    with pytest.raises(ValueError, match="2-D"):
        probes.probe_task(task, good[:, 0], labels, 0, CFG)
    with pytest.raises(KeyError, match="sketch"):
        probes.evaluate_representation({"photo": good}, {"photo": labels},
                                       [_task("c", "cls", "classification", eval_set="sketch")], CFG)
    with pytest.raises(ValueError, match=r"\[N, 5, 2\]"):
        probes.probe_task(_task("lm", "landmarks", "landmarks"), good,
                          {"landmarks": labels["landmarks"].reshape(N, 10)}, 0, CFG)


def test_imbalanced_attribute_scores_chance_not_majority():
    """A rare attribute with uninformative features scores ~50 (balanced accuracy), not the 90% majority."""
    rng = np.random.default_rng(3)
    n = 1500
    y = (rng.random(n) < 0.1).astype(np.int64)
    task = _task("rare", "rare", "classification", num_classes=2)
    cfg = ProbeConfig(seeds=(0,), c_grid=(0.1, 1.0))
    noise = probes.probe_task(task, rng.normal(size=(n, 16)).astype(np.float32), {"rare": y}, 0, cfg)
    assert noise["accuracy"] > 0.0 and abs(noise["score"] - 50) < 12
    signal = np.concatenate([y[:, None] + 0.3 * rng.normal(size=(n, 1)), rng.normal(size=(n, 15))], 1)
    good = probes.probe_task(task, signal.astype(np.float32), {"rare": y}, 0, cfg)
    assert good["score"] > 90 and good["balanced_accuracy"] * 100 == pytest.approx(good["score"])


# ---------------------------------------------------------------- splits by group, user data


def test_split_indices_without_groups_is_unchanged():
    """The synthetic sets' split (and so every score reported so far) must not move: values from before."""
    expected = {(1000, 3): ([815, 315, 426, 6, 879, 666, 258, 868], [493, 595, 252, 821, 293],
                            [643, 428, 951, 896, 368], (56827, 69230, 39868)),
                (37, 0): ([11, 20, 6, 8, 14, 22, 29, 5], [34, 17, 7, 4, 27], [9, 36, 15, 30, 12], (4351, 389, 625)),
                (2000, 2): ([1926, 1288, 1283, 699, 476, 422, 141, 245], [521, 800, 1272, 1018, 1764],
                            [637, 343, 1807, 782, 1924], (2397, 32199, 16403))}
    for (n, seed), (tr8, va5, te5, sums) in expected.items():
        tr, va, te = probes.split_indices(n, seed, ProbeConfig())
        assert (tr[:8].tolist(), va[:5].tolist(), te[:5].tolist()) == (tr8, va5, te5)
        assert tuple(int((s * np.arange(len(s))).sum() % 100003) for s in (tr, va, te)) == sums
        for a, b in zip((tr, va, te), probes.split_indices(n, seed, ProbeConfig(), groups=None)):
            np.testing.assert_array_equal(a, b)


def test_group_split_keeps_groups_disjoint_and_sizes_close():
    rng = np.random.default_rng(0)
    groups = np.array([f"p{g:03d}" for g in rng.integers(0, 120, 1500)])  # uneven group sizes, text ids
    cfg = ProbeConfig()
    tr, va, te = probes.split_indices(1500, 0, cfg, groups=groups)
    assert sorted(np.concatenate([tr, va, te]).tolist()) == list(range(1500))
    sets = [set(groups[i]) for i in (tr, va, te)]
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    assert abs(len(tr) - 900) < 30 and abs(len(va) - 300) < 30
    again = probes.split_indices(1500, 0, cfg, groups=groups)
    for a, b in zip((tr, va, te), again):
        np.testing.assert_array_equal(a, b)
    assert set(groups[probes.split_indices(1500, 1, cfg, groups=groups)[2]]) != sets[2]
    capped = probes.split_indices(1500, 0, ProbeConfig(max_train=50), groups=groups)
    np.testing.assert_array_equal(capped[0], tr[:50])
    with pytest.raises(ValueError, match="2 group"):
        probes.split_indices(100, 0, cfg, groups=np.arange(100) % 2)
    with pytest.raises(ValueError, match="one value per image"):
        probes.split_indices(100, 0, cfg, groups=np.arange(99))


def _user_task(name, labels, kind, group_key="identity", **kw):
    from face_transfer.data.tasks import EvalSet
    user = EvalSet("mine", "real", "user", group_key=group_key)
    return Task(name, (labels,), kind, "mae" if kind == "regression" else "accuracy", "mine", False,
                user_set=user, **kw)


def test_evaluate_representation_splits_a_grouped_set_by_group(data):
    labels, good, _ = data
    verif = _user_task("verif", "identity", "verification")
    cls = _user_task("cls", "cls", "classification")
    res = probes.evaluate_representation({"mine": good}, {"mine": labels}, [verif, cls], CFG)
    for seed_i, seed in enumerate(CFG.seeds):
        alone = probes.probe_task(verif, good, labels, seed, CFG)  # probe_task follows the group key too
        assert alone["score"] == pytest.approx(res["verif"]["scores"][seed_i])
    ungrouped = probes.probe_task(_task("verif", "identity", "verification"), good, labels, 0, CFG)
    assert ungrouped["score"] != pytest.approx(res["verif"]["scores"][0])
    with pytest.raises(KeyError, match="splits by 'person'"):
        probes.evaluate_representation({"mine": good}, {"mine": labels},
                                       [_user_task("c", "cls", "classification", group_key="person")], CFG)
    with pytest.raises(ValueError, match="disagree on the group key"):
        probes.evaluate_representation({"mine": good}, {"mine": labels},
                                       [cls, _user_task("c2", "cls", "classification", group_key=None)], CFG)


def test_string_class_labels_score_like_int_codes(data):
    labels, good, _ = data
    names = np.array(["angry", "calm", "happy", "sad"])[labels["cls"]]
    as_text = probes.probe_task(_task("cls", "mood", "classification"), good, {"mood": names}, 0, CFG)
    as_int = probes.probe_task(_task("cls", "cls", "classification"), good, labels, 0, CFG)
    assert as_text == as_int


def test_class_missing_from_train_split_and_nan_class_labels(data):
    labels, good, _ = data
    tr, va, te = probes.split_indices(N, 0, CFG)
    y = labels["cls"].copy()
    y[te[:3]] = 9  # a class only the test split has: it cannot be predicted, and counts as missed
    r = probes.probe_task(_task("cls", "y", "classification"), good, {"y": y}, 0, CFG)
    assert 0 < r["score"] < 100 * 4 / 5 + 1 and np.isfinite(r["accuracy"])
    yf = labels["cls"].astype(np.float64)
    yf[::5] = np.nan  # a float class column with gaps: those images leave every split
    r = probes.probe_task(_task("cls", "y", "classification"), good, {"y": yf}, 0, CFG)
    assert r["accuracy"] > 0.95


def test_tiny_set_and_unlabelled_regression_name_task_and_size(data):
    labels, good, _ = data
    tiny = {k: v[:4] for k, v in labels.items()}
    with pytest.raises(ValueError, match=r"eval set 'photo' \(tasks \['cls'\]\): 4 images cannot be split"):
        probes.evaluate_representation({"photo": good[:4]}, {"photo": tiny},
                                       [_task("cls", "cls", "classification")], CFG)
    with pytest.raises(ValueError, match=r"task 'cls' \(eval set 'photo'\): 4 images cannot be split"):
        probes.probe_task(_task("cls", "cls", "classification"), good[:4], tiny, 0, CFG)
    yaw = np.full(N, np.nan, np.float32)
    yaw[:3] = 1.0
    with pytest.raises(ValueError, match=r"task 'yaw' \(eval set 'photo'\): only 3 of 600 images have finite"):
        probes.probe_task(_task("yaw", "yaw", "regression"), good, {"yaw": yaw}, 0, CFG)
    with pytest.raises(ValueError, match=r"labels\['yaw'\] has dtype <U"):
        probes.probe_task(_task("yaw", "yaw", "regression"), good, {"yaw": np.array(["1.0"] * N)}, 0, CFG)


def test_linear_r2_reads_a_linear_embedding_whole_and_noise_not_at_all():
    """probes.linear_r2: the held-out fraction of a target embedding's variance a representation holds linearly."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 12))
    linear = x @ rng.normal(size=(12, 5)) * np.array([1, 10, 100, 0.1, 1])  # z-scored: every dim counts alike
    assert probes.linear_r2(x, linear, 0, ProbeConfig()) > 0.99
    assert abs(probes.linear_r2(x, rng.normal(size=(600, 5)), 0, ProbeConfig())) < 0.1
    half = np.concatenate([linear[:, :2], rng.normal(size=(600, 2))], 1)  # two dims held, two not
    assert 0.4 < probes.linear_r2(x, half, 0, ProbeConfig()) < 0.6
    with pytest.raises(ValueError, match="target of shape"):
        probes.linear_r2(x, linear[:10], 0, ProbeConfig())
