"""Teacher zoo: every architecture x source task builds; CosFace head and loss."""
import dataclasses

import keras
import numpy as np
import pytest

from face_transfer.teachers import zoo
from face_transfer.teachers.config import TeacherSpec
from face_transfer.teachers.zoo import ARCHS, SOURCE_TASKS, CosFaceLoss, build_teacher, cosface_loss, embedding_model

N_IDS = 11
OUT_SHAPES = {"recognition": {"identity": N_IDS}, "expression": {"expression": 7}, "pose": {"pose": 3},
              "age_gender": {"age": 1, "gender": 1}}


@pytest.mark.parametrize("task", sorted(SOURCE_TASKS))
@pytest.mark.parametrize("arch", ARCHS)
def test_build_teacher_every_arch_and_task(arch, task):
    spec = TeacherSpec(f"{arch}_{task}", arch, task, (4, 8), 1, 6, input_size=16,
                       channels=1 if arch == "vgg" else 3)
    model = build_teacher(spec, num_identities=N_IDS)
    x = np.random.default_rng(0).normal(size=(2, 16, 16, spec.channels)).astype(np.float32)
    out = model(x, training=False)
    assert set(out) == set(OUT_SHAPES[task])
    for k, d in OUT_SHAPES[task].items():
        assert tuple(out[k].shape) == (2, d), (k, out[k].shape)
    emb = embedding_model(model)
    assert tuple(emb.output.shape) == (None, 6)
    assert emb(x).shape == (2, 6)
    assert not emb.trainable
    assert model.get_layer("embedding").output.shape[-1] == 6


def test_vgg_fc_units_and_input_specs_differ():
    vgg = TeacherSpec("v", "vgg", "expression", (4,), 1, 5, fc_units=16, input_size=16)
    model = build_teacher(vgg)
    assert model.get_layer("fc").output.shape[-1] == 16
    assert vgg.input_spec.offset == 0.0 and abs(vgg.input_spec.scale - 1 / 255.0) < 1e-9
    res = TeacherSpec("r", "resnet", "pose", input_size=24, color_order="bgr")
    assert res.input_spec.offset == -1.0 and res.input_spec.size == 24 and res.input_spec.color_order == "bgr"


def test_build_teacher_rejects_bad_spec():
    with pytest.raises(ValueError, match="bad.*unknown arch 'mlp'"):
        build_teacher(TeacherSpec("bad", "mlp", "pose"))
    with pytest.raises(ValueError, match="bad.*unknown source task 'hair'"):
        build_teacher(TeacherSpec("bad", "resnet", "hair"))


def test_cosface_loss_lower_for_correct_class_with_margin():
    # Small cosine gaps so the scaled softmax does not saturate to exactly zero in float32.
    cos = np.array([[0.3, 0.2, 0.1], [0.2, 0.3, 0.1]], np.float32)
    right = np.asarray(cosface_loss(np.array([0, 1]), cos))
    wrong = np.asarray(cosface_loss(np.array([2, 2]), cos))
    assert right.shape == (2,)
    assert np.all(right < wrong)
    # The margin makes the loss larger than plain scaled softmax cross-entropy for the same cosine.
    no_margin = np.asarray(cosface_loss(np.array([0, 1]), cos, margin=0.0))
    assert np.all(right > no_margin)
    # Hand computation for row 0: softmax over 30 * (cos - 0.2*onehot).
    logits = 30 * (cos[0] - np.array([0.2, 0, 0]))
    expected = -logits[0] + np.log(np.sum(np.exp(logits)))
    np.testing.assert_allclose(right[0], expected, rtol=1e-5)


def test_cosface_loss_serialises():
    loss = CosFaceLoss(scale=16.0, margin=0.35)
    cfg = loss.get_config()
    assert cfg["scale"] == 16.0 and cfg["margin"] == 0.35
    back = CosFaceLoss.from_config(cfg)
    assert (back.scale, back.margin) == (16.0, 0.35)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, CosFaceLoss) and again.margin == 0.35
    cos = np.array([[0.5, 0.2]], np.float32)
    y = np.array([[0]])
    np.testing.assert_allclose(float(loss(y, cos)), float(again(y, cos)), rtol=1e-6)


def test_recognition_teacher_round_trips_through_keras_file(tmp_path):
    spec = TeacherSpec("rec", "resnet", "recognition", (4,), 1, 4, input_size=16)
    model = build_teacher(spec, num_identities=5)
    model.compile(optimizer="adam", loss=zoo.losses_for(spec))
    path = str(tmp_path / "rec.keras")
    model.save(path)
    back = keras.models.load_model(path)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(back(x)["identity"], model(x)["identity"], atol=1e-5)
    # The compiled loss comes back as the registered CosFaceLoss (checkpoints reload with it).
    assert isinstance(back.loss["identity"], CosFaceLoss)


def test_targets_and_metrics_for_pose_and_age_gender():
    labels = {"yaw": np.array([30.0, -15.0]), "pitch": np.array([0.0, 6.0]), "roll": np.array([3.0, 0.0]),
              "age": np.array([45.0, 60.0]), "gender": np.array([0, 1])}
    pose = TeacherSpec("p", "resnet", "pose")
    t = zoo.targets_from_labels(pose, labels)
    np.testing.assert_allclose(np.asarray(t["pose"]), [[1.0, 0.0, 0.1], [-0.5, 0.2, 0.0]], atol=1e-6)
    m = zoo.source_metrics(pose, {"pose": np.asarray(t["pose"])}, labels)
    assert m["yaw_mae_deg"] < 1e-5 and zoo.main_score(m) <= 0
    ag = TeacherSpec("a", "resnet", "age_gender")
    t = zoo.targets_from_labels(ag, labels)
    np.testing.assert_allclose(np.asarray(t["age"])[:, 0], [0.0, 1.0], atol=1e-6)
    m = zoo.source_metrics(ag, {"age": np.asarray(t["age"]), "gender": np.array([[-1.0], [2.0]])}, labels)
    assert m["age_mae_years"] < 1e-4 and m["gender_accuracy"] == 100.0
    assert zoo.main_score(m) == 100.0


def test_dldl_age_head_learns_a_label_distribution_read_as_its_expectation():
    """age_head="dldl": a softmax over DEX's one-year bins, trained towards a Gaussian around the age (it sums to
    1 and peaks at the age), read back as the expectation: logits equal to the log of the target give the age."""
    labels = {"age": np.array([20.0, 47.0, 79.0]), "gender": np.array([1, 0, 1])}
    spec = TeacherSpec("a", "resnet", "age_gender", (8,), 1, 8, input_size=16, age_head="dldl")
    t = np.asarray(zoo.targets_from_labels(spec, labels)["age"])
    assert t.shape == (3, len(zoo.AGE_BINS))
    np.testing.assert_allclose(t.sum(axis=1), 1.0, atol=1e-5)
    assert list(zoo.AGE_BINS[np.argmax(t, axis=1)]) == [20.0, 47.0, 79.0]
    m = zoo.source_metrics(spec, {"age": np.log(t + 1e-12), "gender": np.array([[1.0], [-1.0], [1.0]])}, labels)
    assert m["age_mae_years"] < 0.05 and m["gender_accuracy"] == 100.0
    model = build_teacher(spec)
    assert model.output["age"].shape[-1] == len(zoo.AGE_BINS)
    model.compile(optimizer="adam", loss=zoo.losses_for(spec))
    x = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
    loss = model.train_on_batch(x, {"age": t, "gender": labels["gender"][:, None].astype(np.float32)})
    assert np.isfinite(np.asarray(loss)).all()
    with pytest.raises(ValueError, match="age_head must be one of"):
        TeacherSpec("a", "resnet", "age_gender", age_head="dex")


def test_copy_matching_weights_keeps_the_network_and_names_the_new_head():
    """A warm start onto a new head: every layer of the same name and shapes takes the trained weights; the
    changed head is left as initialised and named."""
    spec = TeacherSpec("a", "resnet", "age_gender", (8,), 1, 8, input_size=16)
    trained = build_teacher(spec)
    for w in trained.weights:
        w.assign(np.random.default_rng(1).normal(size=w.shape).astype(np.float32))
    fresh = build_teacher(dataclasses.replace(spec, age_head="dldl"))
    assert zoo.copy_matching_weights(trained, fresh) == ["age"]
    for layer in fresh.layers:
        if layer.name != "age":
            for a, b in zip(layer.get_weights(), trained.get_layer(layer.name).get_weights()):
                np.testing.assert_array_equal(a, b)
