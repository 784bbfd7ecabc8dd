import os

import pytest
import torch

# Tests never touch the network: torchvision loading must come from the cache or fail.
os.environ.setdefault("PHYSICAL_ADV_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))

# CI sets this: a skipped test there is a failure (it would check nothing on every run).
NO_SKIPS = os.environ.get("PHYSICAL_ADV_NO_SKIPS") == "1"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if NO_SKIPS and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"skipped under PHYSICAL_ADV_NO_SKIPS=1 (CI runs every selected test): {reason}"


@pytest.fixture(scope="session")
def signs_model():
    from physical_adv import load_model

    return load_model("signs", "cpu")
