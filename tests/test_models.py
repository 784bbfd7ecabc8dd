"""The model registry: the embedded model, torchvision loading from the cache, TorchScript files."""

import os

import pytest
import torch

from physical_adv import load_model
from physical_adv.errors import UserError
from physical_adv.models.embedded import SIGNS_WEIGHTS

REQUIRED_SIGN_CLASSES = {"stop", "yield", "no entry", "speed limit 30", "speed limit 50", "speed limit 80"}


def test_signs_weights_ship_inside_the_package_under_5_mb():
    assert SIGNS_WEIGHTS.is_file()
    assert SIGNS_WEIGHTS.stat().st_size <= 5 * 1024 * 1024


def test_signs_model_contract(signs_model):
    assert len(signs_model.class_names) >= 12
    assert len(set(signs_model.class_names)) == len(signs_model.class_names)
    assert REQUIRED_SIGN_CLASSES <= set(signs_model.class_names)
    assert 64 <= signs_model.input_size <= 128
    x = torch.rand(3, 3, signs_model.input_size, signs_model.input_size)
    assert signs_model(x).shape == (3, len(signs_model.class_names))


def test_models_resize_other_input_sizes_to_what_area_downsampling_gives(signs_model):
    from physical_adv.images import to_batch
    from physical_adv.signs import render_clean

    names = ["stop", "yield", "speed limit 50"]
    big = to_batch([render_clean(name, 200) for name in names])
    small = to_batch([render_clean(name, 200) for name in names], signs_model.input_size)  # OpenCV INTER_AREA
    with torch.no_grad():
        p_big, p_small = (torch.softmax(signs_model(x), 1) for x in (big, small))
    assert p_big.shape == (3, len(signs_model.class_names))
    assert [signs_model.class_names[i] for i in p_big.argmax(1)] == names
    assert (p_big - p_small).abs().max() < 0.05  # the wrapper's antialiased resize ≈ an area downsample


def test_gradients_reach_the_input(signs_model):
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    signs_model(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_loaded_models_are_frozen_and_in_eval_mode(signs_model):
    assert not signs_model.training
    assert all(not p.requires_grad for p in signs_model.parameters())


@pytest.fixture
def torch_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("PHYSICAL_ADV_OFFLINE", "1")
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_torchvision_weights_load_from_the_torch_cache(torch_cache):
    import torchvision

    weights = torchvision.models.ResNet18_Weights.DEFAULT
    reference = torchvision.models.resnet18(weights=None)
    torch_cache.mkdir(parents=True)
    torch.save(reference.state_dict(), torch_cache / os.path.basename(weights.url))
    model = load_model("torchvision:resnet18", "cpu")
    assert model.input_size == 224 and len(model.class_names) == 1000
    assert model.class_names[0] == weights.meta["categories"][0]
    for name, tensor in reference.state_dict().items():
        assert torch.equal(model.net.state_dict()[name], tensor), name
    x = torch.rand(1, 3, 224, 224)
    expected = reference.eval()((x - model.mean) / model.std)
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_torchvision_uncached_offline_is_a_clear_error(torch_cache):
    with pytest.raises(UserError, match="not in the torch cache"):
        load_model("torchvision:resnet18", "cpu")


def test_corrupt_cached_torchvision_weights_are_a_clear_error(torch_cache):
    import torchvision

    torch_cache.mkdir(parents=True)
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    torch.save({"fc.weight": torch.zeros(3)}, torch_cache / os.path.basename(url))
    with pytest.raises(UserError, match="do not load"):
        load_model("torchvision:resnet18", "cpu")


class _TinyNet(torch.nn.Module):
    def forward(self, x):
        return torch.stack([x.mean((1, 2, 3)), 1 - x.mean((1, 2, 3))], 1)


def test_torchscript_model_with_class_file(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.jit.script(_TinyNet()).save(str(path))
    classes = tmp_path / "classes.txt"
    classes.write_text("bright\n# a comment\ndark\n")
    model = load_model(str(path), "cpu", classes=classes, input_size=32)
    assert model.class_names == ["bright", "dark"]
    assert model(torch.ones(1, 3, 32, 32)).argmax(1).item() == 0


def test_torchscript_class_count_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.jit.script(_TinyNet()).save(str(path))
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\nc\n")
    with pytest.raises(UserError, match="has 3 classes"):
        load_model(str(path), "cpu", classes=classes, input_size=32)


def test_torchscript_needs_a_class_file(tmp_path):
    path = tmp_path / "tiny.pt"
    torch.jit.script(_TinyNet()).save(str(path))
    with pytest.raises(UserError, match="--classes"):
        load_model(str(path), "cpu")


def test_non_torchscript_file_is_a_clear_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a model")
    classes = tmp_path / "c.txt"
    classes.write_text("a\n")
    with pytest.raises(UserError, match="not a TorchScript model"):
        load_model(str(path), "cpu", classes=classes)


def test_module_factory_model_with_class_file(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "class Net(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        m = x.mean((1, 2, 3))\n"
        "        return torch.stack([m, 1 - m], 1)\n"
        "def make():\n"
        "    return Net()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    classes = tmp_path / "classes.txt"
    classes.write_text("bright\ndark\n")
    model = load_model("my_models:make", "cpu", classes=classes, input_size=32)
    assert model.spec == "my_models:make" and model.class_names == ["bright", "dark"]
    assert model(torch.zeros(1, 3, 32, 32)).argmax(1).item() == 1


def test_module_factory_that_cannot_be_imported_is_a_clear_error(tmp_path):
    classes = tmp_path / "c.txt"
    classes.write_text("a\n")
    with pytest.raises(UserError, match="cannot import"):
        load_model("no_such_module_xyz:make", "cpu", classes=classes)


def test_the_second_signs_model_ships_in_the_package_under_3_mb_and_differs_from_signs(signs_model):
    from physical_adv.models.embedded import EMBEDDED

    path = EMBEDDED["signs-resnet"][0]
    assert path.is_file() and path.stat().st_size <= 3 * 1024 * 1024
    other = load_model("signs-resnet", "cpu")
    assert other.class_names == signs_model.class_names
    assert other.card.extra["arch"] == "resnet" != signs_model.card.extra["arch"]
    assert other.input_size == 48 != signs_model.input_size
    import json

    record = json.loads(path.with_suffix(".json").read_text())
    assert record["config"]["seed"] != json.loads(EMBEDDED["signs"][0].with_suffix(".json").read_text())["config"]["seed"]


def test_the_hardened_signs_model_ships_under_3_mb_with_its_harden_record(signs_model):
    from physical_adv.models.embedded import EMBEDDED

    path = EMBEDDED["signs-hardened"][0]
    assert path.is_file() and path.stat().st_size <= 3 * 1024 * 1024
    hardened = load_model("signs-hardened", "cpu")
    assert hardened.class_names == signs_model.class_names and hardened.input_size == signs_model.input_size
    differ = [not torch.equal(a, b) for a, b in zip(hardened.state_dict().values(), signs_model.state_dict().values())]
    assert any(differ)
    import json

    record = json.loads(path.with_suffix(".json").read_text())
    assert record["model"] == "hardened" and record["base_model"]["spec"] == "signs"
    assert set(record["config"]["methods"]) == {"occlusion", "eot"} and record["config"]["eps"] == 32
