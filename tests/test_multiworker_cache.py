"""The expensive teacher pass over a user's face folder, split across 2 workers on loopback
(MultiWorkerMirroredStrategy, TF_CONFIG): each prepares and embeds its own shards, the chief merges."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests import user_files
from tests.test_distribute import _free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.timeout(900)
def test_two_workers_split_the_face_prepass_and_the_cache(tmp_path):
    models = user_files.write_teacher_files(str(tmp_path / "models"), steps=0)
    user_files.write_face_folder_with_bad_files(str(tmp_path / "faces"), 90)
    fer = user_files.write_labelled_sets(str(tmp_path / "data"), n_celeba=0, n_fer=40)["fer2013"]
    run_dir = tmp_path / "run"
    from tests.test_user_inputs import _config
    import dataclasses
    cfg = _config(["pipeline", "--preset=smoke", f"--run_dir={run_dir}", f"--teacher={models['face_id'][1]}",
                   f"--teacher={models['pose'][1]}", f"--faces={tmp_path / 'faces'}", f"--tasks=fer2013:{fer}",
                   "--nosynth_tasks", "--cache_size=90"])
    # shards of 20 faces / 16 embeddings, so that each worker has several of its own
    r = dataclasses.replace
    cfg = r(cfg, data=r(cfg.data, cache_shard_size=16, faces=r(cfg.data.faces, shard_size=20)))
    (tmp_path / "config.json").write_text(cfg.to_json())
    args = [f"--config_json={tmp_path / 'config.json'}", f"--run_dir={run_dir}", "--strategy=multi_worker"]
    cfg_args = []
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    procs = []
    for k in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": ROOT,
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": k}})}
        procs.append(subprocess.Popen([sys.executable, "-m", "trainers.embed", *args, *cfg_args], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=800) for p in procs]
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    assert "worker 1 of 2" in outs[0][1] and "worker 2 of 2" in outs[1][1]
    manifest = json.load(open(run_dir / "cache" / "manifest.json"))
    assert manifest["workers"] == 2 and manifest["n"] == 90
    faces = json.load(open(run_dir / "faces" / "manifest.json"))
    assert faces["report"]["kept"] == 90 and faces["report"]["corrupt"] == 3
    # the merged cache equals what one process computes from the same prepared faces
    from face_transfer.data.faces import FaceSet
    from face_transfer.teachers.cache import embed_all, load_embedding_cache
    from face_transfer.teachers.refs import load_teacher_ref
    teachers = [load_teacher_ref(r) for r in cfg.teacher_files]
    index, embs = load_embedding_cache(str(run_dir / "cache"))
    np.testing.assert_array_equal(index, np.arange(90))
    direct = embed_all(teachers, FaceSet.open(str(run_dir / "faces")).read(0, 90))
    for name in direct:
        np.testing.assert_allclose(embs[name], direct[name], atol=1e-4)
