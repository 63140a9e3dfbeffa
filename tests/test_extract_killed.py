"""A process killed with SIGKILL mid-extraction loses no committed row, and --resume finishes the store."""

import signal
import subprocess
import sys

import numpy as np
import pytest

from cvae_features.extraction import extract
from cvae_features.model import ConvVAE
from cvae_features.store import FeatureStore

KILL_AFTER_3_BATCHES = """
import os, signal, sys
from cvae_features.extraction import extract
def kill(progress):
    if progress.batch == 2:  # the third batch is committed: die without any clean-up
        os.kill(os.getpid(), signal.SIGKILL)
extract("digits:train", sys.argv[1], model=sys.argv[2], batch_size=100, workers=0, progress=False,
        scores=True, callback=kill)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_extraction_resumes_to_the_uninterrupted_store(tmp_path):
    model = ConvVAE(image_size=8, channels=1, latent_dim=4)
    model_path = model.save(tmp_path / "model.pt")
    killed = tmp_path / "killed.h5"
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_3_BATCHES, str(killed), str(model_path)],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    with FeatureStore(killed) as s:
        assert not s.is_complete and s.n_rows == 300  # exactly the three committed batches survive
        assert s.n_pending == 1347 - 300

    res = extract("digits:train", killed, model=model_path, batch_size=100, workers=0, progress=False,
                  scores=True, resume=True)
    full = extract("digits:train", tmp_path / "full.h5", model=model_path, batch_size=100, workers=0,
                   progress=False, scores=True)
    assert res.complete and res.n_new == 1347 - 300  # finished rows are not recomputed
    with FeatureStore(killed) as a, FeatureStore(full.path) as b:
        assert a.is_complete and a.n_rows == b.n_rows == 1347
        assert a.keys == b.keys
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.extra("neg_elbo"), b.extra("neg_elbo"))
