import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def quintic():
    from mflow.geometry.hypersurface import manifold

    return manifold("fermat_quintic")
