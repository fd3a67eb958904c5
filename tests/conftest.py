import os
import tempfile

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
# the test suite writes only to temporary folders: point caches too (mflow.data.datamodule.default_cache_dir)
os.environ["MFLOW_CACHE_DIR"] = tempfile.mkdtemp(prefix="mflow-test-cache-")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def quintic():
    from mflow.geometry.presets import manifold

    return manifold("fermat_quintic")
