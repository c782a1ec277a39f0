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
