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


@pytest.mark.gpu
def test_eot_render_on_cuda_matches_cpu_and_passes_gradients():
    import dataclasses

    from physical_adv.attack import eot
    from physical_adv.images import load_image, to_batch

    params = eot.sample(eot.load_distribution("print-camera"), 16, 256, 64, torch.Generator().manual_seed(0))
    on_gpu = dataclasses.replace(params, **{f.name: v.cuda() for f in dataclasses.fields(params)
                                            if isinstance(v := getattr(params, f.name), torch.Tensor)})
    texture = to_batch(load_image("sign:stop"), 256)
    x = texture.cuda().requires_grad_(True)
    out = eot.render(x, on_gpu)
    out.mean().backward()
    assert out.device.type == "cuda" and x.grad is not None and x.grad.abs().sum() > 0
    # JPEG rounding may flip a few coefficients between devices; the images must agree closely
    assert (out.detach().cpu() - eot.render(texture, params)).abs().mean() < 2e-3
    fresh = eot.sample(eot.load_distribution("print-camera"), 8, 256, 64, torch.Generator("cuda").manual_seed(0), "cuda")
    assert eot.render(texture.cuda(), fresh).shape == (8, 3, 64, 64)


@pytest.mark.gpu
def test_attack_runs_on_cuda(tmp_path):
    from physical_adv.attack.runner import AttackConfig, run_attack

    record = run_attack(AttackConfig(source="sign:stop", out=tmp_path / "run", device="cuda", steps=5, eval_samples=50),
                        show_progress=False).record
    assert record["device"].startswith("cuda") and 0 <= record["metrics"]["eot_success"] <= 1
