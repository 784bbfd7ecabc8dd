"""``physical-adv substitute``: Papernot's substitute training against a label-only oracle.

Real model (``signs``) as the oracle, real scenes, a real loopback HTTP server; small runs
(a few seed scenes per class, two rounds, one epoch) so each test takes seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from helpers import assert_one_line_error, run_cli
from physical_adv.blackbox.server import make_app, running_server
from physical_adv.blackbox.target import ModelTarget
from physical_adv.models import load_model
from physical_adv.models.archs import build_arch
from physical_adv.models.signs_net import SIGNS_MEAN, SIGNS_STD
from physical_adv.models.stored import save_model
from physical_adv.signs.designs import CLASS_NAMES
from physical_adv.substitute import SubstituteConfig, jacobian_augment, rendered_scenes, train_substitute

SMALL = ["--per-class", "2", "--rounds", "2", "--epochs", "1", "--input-size", "32", "--probe", "14", "--device", "cpu"]


class CountingModel(nn.Module):
    """Wraps a real classifier and counts the images it is called on."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0

    @property
    def device(self) -> torch.device:
        return self.model.device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.model(x)


def _counted(budget: int | None) -> tuple[ModelTarget, CountingModel]:
    target = ModelTarget("signs", "label", top_k=1, budget=budget, device="cpu")
    counter = CountingModel(target._model)
    target._model = counter
    return target, counter


@pytest.fixture(scope="module")
def small_substitute(tmp_path_factory) -> tuple[Path, dict]:
    """One small CLI run: 28 seed scenes, budget 40 (12 augmented points by reservoir), 2 rounds."""
    from physical_adv.cli import main

    out = tmp_path_factory.mktemp("sub") / "model"
    with pytest.raises(SystemExit) as exc:
        main(["substitute", "--oracle", "signs", "--out", str(out), "--budget", "40", *SMALL])
    assert exc.value.code == 0
    return out, json.loads((out / "substitute.json").read_text())


def test_oracle_query_counter_equals_images_the_wrapped_model_classified(tmp_path):
    target, counter = _counted(budget=50)
    probe, probe_counter = _counted(budget=None)
    cfg = SubstituteConfig(oracle="signs", out=tmp_path / "sub", budget=50, rounds=3, per_class=2, epochs=1, probe=20, input_size=32,
                           device="cpu")
    record = train_substitute(cfg, show_progress=False, target=target, probe_target=probe)
    assert counter.images == target.queries == record["queries"] == 50  # 28 seeds + 22 augmented, budget met exactly
    assert probe_counter.images == probe.queries == record["probe_queries"] == 20
    assert [r["queries"] for r in record["rounds"]] == [28, 50]  # the third round had nothing left to label
    assert record["stopped"] == "budget spent"
    assert record["rounds"][0]["new_points"] == 22 and record["rounds"][0]["reservoir"] is True


def test_substitute_dir_is_a_model_every_command_accepts(small_substitute, capsys):
    out, record = small_substitute
    model = load_model(str(out), device="cpu")
    assert tuple(model.class_names) == tuple(CLASS_NAMES)
    code, stdout, err = run_cli(capsys, "classify", "--model", out, "--json", "sign:stop")
    assert code == 0, err
    assert json.loads(stdout)[0]["top"][0]["class"] in CLASS_NAMES


def test_substitute_record_has_per_round_figures_and_provenance(small_substitute):
    _, record = small_substitute
    assert record["queries"] == 40 and record["probe_queries"] == 14
    assert record["seed_set"]["size"] == 28 and record["config"]["seed"] == 0
    assert [r["set_size"] for r in record["rounds"]] == [28, 40]
    probe = record["rounds"][-1]["probe"]
    assert probe["n"] == 14 and 0 <= probe["low"] <= probe["agreement"] <= probe["high"] <= 1
    assert record["oracle"]["mode"] == "label" and "torch" in record["versions"]


def test_jacobian_augmentation_steps_lambda_along_the_probability_gradient(signs_model):
    x = rendered_scenes(0x123, 0, torch.arange(8) % len(CLASS_NAMES))
    y = signs_model(x).argmax(1)
    up, down = jacobian_augment(signs_model, x, y, 0.01), jacobian_augment(signs_model, x, y, -0.01)
    assert up.min() >= 0 and up.max() <= 1
    assert (up - x).abs().max() <= 0.01 + 1e-6 and ((up - x).abs() > 0).any()
    with torch.no_grad():
        p = [signs_model(z).softmax(1).gather(1, y[:, None]).sum().item() for z in (down, x, up)]
    assert p[0] < p[1] < p[2]


def test_budget_smaller_than_the_seed_set_is_one_line_error(tmp_path, capsys):
    out = tmp_path / "sub"
    code, _, err = run_cli(capsys, "substitute", "--oracle", "signs", "--out", out, "--budget", "20", *SMALL)
    assert_one_line_error(code, err, "smaller than the seed set (28 images)")
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def cats_and_dogs_url(tmp_path_factory):
    """A loopback label API serving a real (untrained) model whose classes are not the signs classes."""
    folder = tmp_path_factory.mktemp("pets") / "pets"
    net = build_arch("signnet", 2, width=4)
    save_model(net, folder, {"note": "test"}, arch="signnet", arch_kwargs={"width": 4}, input_size=32,
               class_names=["cat", "dog"], mean=SIGNS_MEAN, std=SIGNS_STD)
    target = ModelTarget(str(folder), "label", top_k=1, device="cpu")
    with running_server(make_app(target, None)) as url:
        yield url


def test_oracle_answering_a_class_outside_the_known_list_is_one_line_error(tmp_path, capsys, cats_and_dogs_url):
    out = tmp_path / "sub"
    code, _, err = run_cli(capsys, "substitute", "--oracle", cats_and_dogs_url, "--out", out, "--budget", "40", *SMALL)
    assert_one_line_error(code, err, "which is not one of the 14 known classes")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_classes_file_names_a_remote_oracles_label_set(tmp_path, capsys, cats_and_dogs_url):
    names = tmp_path / "pets.txt"
    names.write_text("cat\ndog\n")
    out = tmp_path / "sub"
    code, _, err = run_cli(capsys, "substitute", "--oracle", cats_and_dogs_url, "--out", out, "--budget", "40",
                           "--classes", names, *SMALL)
    assert code == 0, err
    record = json.loads((out / "substitute.json").read_text())
    assert record["class_names"] == ["cat", "dog"] and record["oracle"]["kind"] == "http" and record["queries"] == 40
    assert load_model(str(out), device="cpu").class_names == ["cat", "dog"]


@pytest.mark.parametrize("damage", ["no weights", "garbage weights"])
def test_unreadable_substitute_dir_as_model_is_one_line_error(tmp_path, capsys, damage):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "substitute.json").write_text("{}")
    if damage == "garbage weights":
        (broken / "model.safetensors").write_bytes(b"\x00not a safetensors file")
    code, stdout, err = run_cli(capsys, "classify", "--model", broken, "sign:stop")
    assert_one_line_error(code, err, str(broken))
    assert stdout == ""


def test_failed_run_leaves_the_previous_substitute_untouched(small_substitute, capsys):
    out, _ = small_substitute
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run_cli(capsys, "substitute", "--oracle", "signs", "--out", out, "--budget", "5", *SMALL)
    assert_one_line_error(code, err, "smaller than the seed set")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary folder left beside it


def test_non_empty_folder_that_is_not_a_substitute_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = run_cli(capsys, "substitute", "--oracle", "signs", "--out", tmp_path, "--budget", "40", *SMALL)
    assert_one_line_error(code, err, "is not empty and is not a previous substitute")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("option, value, fragment", [("--lambda", "0", "lambda must be in (0, 1]"),
                                                      ("--rounds", "0", "rounds must be a positive integer"),
                                                      ("--probe", "-1", "probe must be ≥ 0")])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, option, value, fragment):
    code, _, err = run_cli(capsys, "substitute", "--oracle", "signs", "--out", tmp_path / "s", *SMALL, option, value)
    assert_one_line_error(code, err, fragment)


def test_an_interrupted_run_resumes_from_its_last_round_without_paying_twice(tmp_path, monkeypatch):
    import physical_adv.substitute as substitute

    def cfg(out):
        return SubstituteConfig(oracle="signs", out=out, budget=60, rounds=3, per_class=2, epochs=1, probe=14,
                                input_size=32, device="cpu")

    whole = train_substitute(cfg(tmp_path / "whole"), show_progress=False, target=_counted(60)[0], probe_target=_counted(None)[0])

    real_train, calls = substitute.train_round, []

    def ctrl_c_in_the_second_round(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(substitute, "train_round", ctrl_c_in_the_second_round)
    first, first_counter = _counted(60)
    with pytest.raises(KeyboardInterrupt):
        train_substitute(cfg(tmp_path / "sub"), show_progress=False, target=first, probe_target=_counted(None)[0])
    assert not (tmp_path / "sub").exists() and substitute.checkpoint_path(tmp_path / "sub").is_file()
    assert first_counter.images == 56  # 28 seeds + 28 from round 0's augmentation, kept in the checkpoint
    monkeypatch.setattr(substitute, "train_round", real_train)

    second, second_counter = _counted(60 - 56)
    probe, probe_counter = _counted(None)
    record = train_substitute(cfg(tmp_path / "sub"), show_progress=False, target=second, probe_target=probe)
    assert second_counter.images == 4 and probe_counter.images == 0  # only what was still unpaid
    assert record["queries"] == whole["queries"] == 60 and record["resumed_at_round"] == 1
    assert [r["queries"] for r in record["rounds"]] == [r["queries"] for r in whole["rounds"]]
    assert [r["probe"] for r in record["rounds"]] == [r["probe"] for r in whole["rounds"]]
    resumed, uninterrupted = load_model(str(tmp_path / "sub"), "cpu"), load_model(str(tmp_path / "whole"), "cpu")
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), uninterrupted.state_dict().values()))
    assert not substitute.checkpoint_path(tmp_path / "sub").exists()


def test_a_checkpoint_of_other_options_is_not_resumed(tmp_path, monkeypatch):
    import physical_adv.substitute as substitute

    cfg = SubstituteConfig(oracle="signs", out=tmp_path / "sub", budget=40, rounds=2, per_class=2, epochs=1, probe=0,
                           input_size=32, device="cpu")
    other = SubstituteConfig(**{**cfg.__dict__, "lam": 0.2})
    substitute.save_checkpoint(other, {"next_round": 1, "rounds": [], "queries": 99}, {"labels": torch.zeros(1)})
    target, counter = _counted(40)
    record = train_substitute(cfg, show_progress=False, target=target)
    assert record["resumed_at_round"] is None and counter.images == record["queries"] == 40
