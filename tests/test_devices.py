import pytest
import torch

from physical_adv.devices import resolve_device
from physical_adv.errors import UserError


def _hardware(monkeypatch, cuda, mps):
    """Pretend the machine has (or lacks) each accelerator: the probes are torch's, not the code under test."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (True, False, "cuda"),
                                                 (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    _hardware(monkeypatch, cuda, mps)
    assert resolve_device("auto") == resolve_device(None) == torch.device(expected)


def test_auto_on_this_machine_is_cuda_exactly_when_cuda_is_available():
    assert (resolve_device("auto").type == "cuda") == torch.cuda.is_available()


@pytest.mark.parametrize("name, fragment", [("cuda", "no CUDA GPU"), ("mps", "MPS is not available")])
def test_an_absent_accelerator_asked_for_by_name_is_user_error(monkeypatch, name, fragment):
    _hardware(monkeypatch, False, False)
    with pytest.raises(UserError, match=fragment):
        resolve_device(name)


def test_a_malformed_cuda_device_is_user_error(monkeypatch):
    _hardware(monkeypatch, True, False)
    with pytest.raises(UserError, match="bad device 'cuda:x'"):
        resolve_device("cuda:x")


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
    assert record["device"].startswith("cuda")
    # five steps do not fool the model yet (on CPU: 0.959 → 0.933), but they must push the true class down
    assert record["metrics"]["mean_true_prob"] < record["metrics"]["clean_mean_true_prob"] - 0.01
