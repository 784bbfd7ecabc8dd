import os

import pytest
import torch

# Tests never touch the network: torchvision loading must come from the cache or fail.
os.environ.setdefault("PHYSICAL_ADV_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def signs_model():
    from physical_adv import load_model

    return load_model("signs", "cpu")
