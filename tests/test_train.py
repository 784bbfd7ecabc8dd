"""The training command really trains, records its provenance and is reproducible."""

import json

import torch

from physical_adv.models.embedded import load_signs
from physical_adv.signs.train import TrainConfig, train_signs


def _tiny(tmp_path, name, seed=3):
    return TrainConfig(out=tmp_path / f"{name}.safetensors", seed=seed, samples=64, batch_size=32, workers=0, threads=1, eval_samples=28)


def test_training_writes_loadable_weights_and_a_record(tmp_path):
    cfg = _tiny(tmp_path, "a")
    record = train_signs(cfg, show_progress=False)
    model = load_signs(cfg.out)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 14)
    saved = json.loads(cfg.out.with_suffix(".json").read_text())
    assert saved["config"]["seed"] == 3
    assert "torch" in saved["versions"] and saved["metrics"]["heldout"]["n"] == 28
    assert record["train_seconds"] > 0


def test_same_seed_gives_the_same_weights(tmp_path):
    a, b = _tiny(tmp_path, "a"), _tiny(tmp_path, "b")
    train_signs(a, show_progress=False)
    train_signs(b, show_progress=False)
    sa, sb = load_signs(a.out).state_dict(), load_signs(b.out).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bad_training_options_are_rejected():
    import pytest

    with pytest.raises(ValueError, match="samples"):
        TrainConfig(out="x.safetensors", samples=3)
