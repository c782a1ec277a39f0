"""MirroredStrategy over 2 logical CPU devices matches one device for the same global batch."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def test_mirrored_two_cpus_matches_single_device(tiny_checkpoint, tmp_path):
    script = Path(__file__).with_name("distributed_check.py")
    done = subprocess.run([sys.executable, str(script), tiny_checkpoint, str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    single, mirrored = result["single"], result["mirrored"]
    assert single["replicas"] == 1 and mirrored["replicas"] == 2
    # Same global batches: per-replica halves, weighted by 1/global size, all-reduced, plus
    # 2-way gradient accumulation inside each replica: the updates must agree to float error.
    assert mirrored["dev"]["loss"] == pytest.approx(single["dev"]["loss"], rel=1e-4)
    assert mirrored["dev"]["accuracy"] == pytest.approx(single["dev"]["accuracy"])
    np.testing.assert_allclose(mirrored["weights"], single["weights"], rtol=1e-4, atol=1e-6)


def free_ports(n):
    import socket

    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_two_processes_match_one_process(tiny_checkpoint, sentiment_files, tmp_path):
    """Two workers on localhost (TF_CONFIG) train the same model as one process would."""
    import os

    from conftest import tiny_overrides

    train, dev = sentiment_files
    common = ["model.hidden_dropout=0", "model.attention_dropout=0", "model.classifier_dropout=0",
              "train.epochs=1"]
    single = subprocess.run([sys.executable, "-m", "tfllm.train",
                             *tiny_overrides(tiny_checkpoint, train, dev, tmp_path / "single", *common)],
                            capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]

    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    args = tiny_overrides(tiny_checkpoint, train, dev, tmp_path / "multi", *common,
                          "distribute.strategy=multi_worker")
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps(
            {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen([sys.executable, "-m", "tfllm.train", *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    info = json.loads((tmp_path / "multi" / "run_info.json").read_text())
    assert info["replicas"] == 2
    one = json.loads((tmp_path / "single" / "metrics.json").read_text())
    two = json.loads((tmp_path / "multi" / "metrics.json").read_text())
    assert two["steps"] == one["steps"]
    assert two["dev"]["loss"] == pytest.approx(one["dev"]["loss"], rel=1e-4)
    assert not list(tmp_path.glob("*tfllm-worker*"))
