"""The training command really trains, records its provenance and is reproducible."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from physical_adv.images import to_batch
from physical_adv.models.base import Classifier, ModelCard
from physical_adv.models.embedded import load_signs
from physical_adv.models.signs_net import SIGNS_INPUT_SIZE, SIGNS_MEAN, SIGNS_STD, SignNet
from physical_adv.signs.designs import CLASS_NAMES
from physical_adv.signs.scenes import SignBank, render_batch
from physical_adv.signs.train import TrainConfig, train_signs


def _tiny(tmp_path, name, seed=3, samples=64, batch_size=32, eval_samples=28):
    return TrainConfig(out=tmp_path / f"{name}.safetensors", seed=seed, samples=samples, batch_size=batch_size, workers=0,
                       threads=1, eval_samples=eval_samples)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """20 steps of 32 scenes: the weights as initialised (same seed) and as trained, and the record."""
    cfg = _tiny(tmp_path_factory.mktemp("train"), "short", samples=640)
    torch.manual_seed(cfg.seed)  # train_signs initialises the network right after seeding, as here
    init = Classifier(SignNet(len(CLASS_NAMES), width=cfg.width), ModelCard("signs", CLASS_NAMES, SIGNS_INPUT_SIZE, "init"),
                      SIGNS_MEAN, SIGNS_STD).eval()
    record = train_signs(cfg, show_progress=False)
    return cfg, init, load_signs(cfg.out), record


@pytest.fixture(scope="module")
def fixed_batch():
    """224 scenes (16 of each class) from a seed training never uses."""
    rng = np.random.default_rng(77)
    labels = np.arange(224) % len(CLASS_NAMES)
    return to_batch(render_batch(rng, SignBank(rng, styles_per_class=4), labels, SIGNS_INPUT_SIZE)), torch.from_numpy(labels)


def _loss_and_accuracy(model, batch):
    x, y = batch
    with torch.no_grad():
        logits = model(x)
    return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def test_a_short_training_run_lowers_the_loss_and_raises_accuracy(short_run, fixed_batch):
    _, init, trained, _ = short_run
    loss0, acc0 = _loss_and_accuracy(init, fixed_batch)
    loss1, acc1 = _loss_and_accuracy(trained, fixed_batch)
    assert loss1 < loss0 - 0.3, (loss0, loss1)  # measured 2.64 → 2.05
    assert acc1 > acc0 + 0.1, (acc0, acc1)  # measured 7 % (chance) → 29 %


def test_training_record_holds_config_versions_and_heldout_accuracy(short_run):
    cfg, _, _, record = short_run
    saved = json.loads(cfg.out.with_suffix(".json").read_text())
    assert saved["config"]["seed"] == 3 and saved["config"]["samples"] == 640
    assert "torch" in saved["versions"] and saved["metrics"]["heldout"]["n"] == 28
    assert saved["class_names"] == list(CLASS_NAMES) and record["metrics"] == saved["metrics"]


def test_same_seed_gives_the_same_weights(tmp_path):
    a, b = _tiny(tmp_path, "a", eval_samples=0), _tiny(tmp_path, "b", eval_samples=0)
    train_signs(a, show_progress=False)
    train_signs(b, show_progress=False)
    sa, sb = load_signs(a.out).state_dict(), load_signs(b.out).state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bad_training_options_are_rejected():
    with pytest.raises(ValueError, match="samples"):
        TrainConfig(out="x.safetensors", samples=3)
