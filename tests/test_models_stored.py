"""Stored models (files and model directories), ensembles, and sheets scored by another model."""

import json

import numpy as np
import pytest
import torch

from capture_sheets import write_run
from helpers import assert_one_line_error, run_cli
from physical_adv.errors import UserError
from physical_adv.models import EnsembleClassifier, load_model
from physical_adv.models.archs import build_arch
from physical_adv.models.stored import load_stored, save_model
from physical_adv.sheet import SheetConfig, make_sheet
from physical_adv.signs.designs import CLASS_NAMES


def _save_resnet(out, seed=0, names=CLASS_NAMES, input_size=48):
    torch.manual_seed(seed)
    net = build_arch("resnet", len(names), width=8).eval()
    save_model(net, out, {"made_by": "test", "seed": seed}, arch="resnet", arch_kwargs={"width": 8},
               input_size=input_size, class_names=names, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    return net


@pytest.fixture
def model_dir(tmp_path):
    _save_resnet(tmp_path / "sub")
    return tmp_path / "sub"


def test_a_model_directory_loads_by_path_with_its_architecture_size_and_classes(model_dir):
    model = load_model(str(model_dir), "cpu")
    assert model.class_names == list(CLASS_NAMES) and model.input_size == 48
    assert model.card.extra["arch"] == "resnet" and model.card.extra["arch_kwargs"] == {"width": 8}
    assert json.loads((model_dir / "model.json").read_text())["made_by"] == "test"
    assert model(torch.rand(3, 3, 64, 64)).shape == (3, len(CLASS_NAMES))


def test_stored_weights_round_trip_exactly(tmp_path):
    net = _save_resnet(tmp_path / "m.safetensors", seed=4)
    x = torch.rand(2, 3, 48, 48)
    loaded = load_stored(tmp_path / "m.safetensors")
    with torch.no_grad():
        expected = net((x - 0.5) / 0.25)
        assert torch.equal(loaded(x), expected)
    assert (tmp_path / "m.json").is_file()


def test_the_embedded_signs_file_is_a_stored_model(signs_model):
    assert signs_model.card.extra["arch"] == "signnet" and signs_model.input_size == 64


def test_an_ensemble_averages_its_members_logits_in_one_pass_each(model_dir, signs_model):
    ens = load_model(f"signs,{model_dir}", "cpu")
    assert isinstance(ens, EnsembleClassifier) and ens.input_size == 64
    assert [m["spec"] for m in ens.card.extra["members"]] == ["signs", str(model_dir)]
    member = load_model(str(model_dir), "cpu")
    calls = []
    for m in ens.members:
        m.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    x = torch.rand(5, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ens(x), (signs_model(x) + member(x)) / 2, atol=1e-5)
    assert calls == [5, 5]  # one batched forward per member


def test_an_ensemble_passes_gradients_to_the_input(model_dir):
    ens = load_model(f"signs,{model_dir}", "cpu")
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    ens(x)[:, 0].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_an_ensemble_of_models_with_different_classes_is_a_clear_error(tmp_path):
    _save_resnet(tmp_path / "other", names=tuple(reversed(CLASS_NAMES)))
    with pytest.raises(UserError, match="same classes"):
        load_model(f"signs,{tmp_path / 'other'}", "cpu")


@pytest.mark.parametrize("spec", ["signs,", ",signs"])
def test_an_ensemble_with_an_empty_member_is_a_clear_error(spec):
    with pytest.raises(UserError, match="joined with commas"):
        load_model(spec, "cpu")


def test_unreadable_model_directories_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "classify", "sign:stop", "--model", tmp_path / "empty")
    assert_one_line_error(code, err, "has no model.safetensors")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "model.safetensors").write_bytes(b"not a safetensors file")
    code, _, err = run_cli(capsys, "classify", "sign:stop", "--model", tmp_path / "junk")
    assert_one_line_error(code, err, "cannot read the weights")


def test_weights_that_do_not_fit_their_architecture_are_a_clear_error(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    _save_resnet(tmp_path / "m")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "m" / "model.safetensors"), framework="pt") as fh:
        meta = fh.metadata()
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    meta["arch_kwargs"] = json.dumps({"width": 16})  # the file now claims another width
    save_file(state, str(tmp_path / "m" / "model.safetensors"), metadata=meta)
    code, _, err = run_cli(capsys, "classify", "sign:stop", "--model", tmp_path / "m")
    assert_one_line_error(code, err, "do not fit architecture 'resnet'")


def test_metadata_naming_an_unknown_architecture_is_a_clear_error(tmp_path, capsys):
    from safetensors.torch import save_file

    (tmp_path / "m").mkdir()
    save_file({"w": torch.zeros(1)}, str(tmp_path / "m" / "model.safetensors"),
              metadata={"arch": "transformer9000", "class_names": json.dumps(list(CLASS_NAMES))})
    code, _, err = run_cli(capsys, "classify", "sign:stop", "--model", tmp_path / "m")
    assert_one_line_error(code, err, "unknown architecture 'transformer9000'")


# -- a sheet scored by another model than the one attacked (transfer through print) ---------------


@pytest.fixture
def transfer_sheet(tmp_path, model_dir):
    run = write_run(tmp_path / "run", "stop", model=str(model_dir))
    return make_sheet(SheetConfig(runs=(str(run),), out=tmp_path / "t.pdf", previews=False, model="signs")), model_dir


def test_a_transfer_sheet_scores_every_tile_with_its_model_and_records_the_attacked_one(transfer_sheet, signs_model):
    sheet, model_dir = transfer_sheet
    tiles = sheet.manifest["tiles"]
    assert [t["model"] for t in tiles] == ["signs", "signs"]
    assert [t["attacked_model"] for t in tiles] == [str(model_dir)] * 2
    assert set(sheet.manifest["models"]) == {"signs"}
    from physical_adv.images import load_image, to_batch

    # the digital top-1 is the scorer's (signs), not the attacked model's
    img = load_image(tmp_path_of(sheet) / "run" / "adversarial.png")
    with torch.no_grad():
        pred = signs_model(to_batch(img, 64)).argmax(1).item()
    assert tiles[0]["digital"]["pred"] == CLASS_NAMES[pred]


def tmp_path_of(sheet):
    return sheet.pdf.parent


def test_a_transfer_tile_says_so_in_its_label(transfer_sheet):
    from physical_adv.manifest import attack_label

    sheet, model_dir = transfer_sheet
    assert attack_label(sheet.manifest["tiles"][0]) == f"white-box on {model_dir} (transfer)"
    assert attack_label(sheet.manifest["tiles"][1]) is None  # the clean control


def test_an_ordinary_sheet_records_the_attacked_model_as_its_scorer(tmp_path):
    from physical_adv.manifest import attack_label

    run = write_run(tmp_path / "run", "stop")
    sheet = make_sheet(SheetConfig(runs=(str(run),), out=tmp_path / "s.pdf", previews=False))
    assert sheet.manifest["tiles"][0]["model"] == sheet.manifest["tiles"][0]["attacked_model"] == "signs"
    assert attack_label(sheet.manifest["tiles"][0]) == "white-box"


def test_a_scoring_model_without_the_runs_class_is_a_clear_error_and_writes_nothing(tmp_path, capsys):
    _save_resnet(tmp_path / "few", names=("cat", "dog") + tuple(f"c{i}" for i in range(12)))
    run = write_run(tmp_path / "run", "stop")
    code, _, err = run_cli(capsys, "sheet", run, "--model", tmp_path / "few", "--out", tmp_path / "s.pdf")
    assert_one_line_error(code, err, "unknown run")
    assert not (tmp_path / "s.pdf").exists() and not (tmp_path / "s.json").exists()


def test_capture_of_a_transfer_sheet_classifies_with_the_scoring_model(transfer_sheet, tmp_path):
    from physical_adv.capture import CaptureConfig, run_capture
    from physical_adv.simulate import SimulateConfig, simulate

    sheet, model_dir = transfer_sheet
    photos = tmp_path / "photos"
    simulate(SimulateConfig(pdf=sheet.pdf, out=photos, n=2, seed=1), show_progress=False)
    run_capture(CaptureConfig(sheet=sheet.manifest_path, images=photos, out=tmp_path / "cap", window=False, device="cpu"),
                show_progress=False)
    lines = [json.loads(line) for line in (tmp_path / "cap" / "detections.jsonl").read_text().splitlines()]
    assert lines and {line["model"] for line in lines} == {"signs"}
