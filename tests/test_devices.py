import pytest
import torch

from physical_adv.devices import resolve_device
from physical_adv.errors import UserError


def test_auto_picks_cuda_when_present_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else None
    device = resolve_device("auto")
    if expected:
        assert device.type == "cuda"
    else:
        assert device.type in ("cpu", "mps")


def test_cpu_is_always_available():
    assert resolve_device("cpu") == torch.device("cpu")


def test_unknown_device_is_user_error():
    with pytest.raises(UserError, match="unknown device"):
        resolve_device("tpu")


@pytest.mark.gpu
def test_signs_model_runs_on_cuda():
    from physical_adv import load_model

    model = load_model("signs", "cuda")
    x = torch.rand(4, 3, 64, 64, device="cuda", requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and x.grad.device.type == "cuda"
