"""``physical-adv harden``: adversarial fine-tuning of a real model (``signs``), real attacks,
real scenes, small budgets (a few hundred examples per epoch) so each run takes seconds."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from helpers import assert_one_line_error, run_cli, two_class_torchscript
from physical_adv.harden import HardenConfig, checkpoint_path, harden
from physical_adv.models import load_model
from physical_adv.signs.designs import render_clean

TINY = dict(samples=128, batch_size=32, epochs=2, check_samples=16, check_steps=2, steps=2, threads=2, device="cpu")


def _weights(spec) -> list[torch.Tensor]:
    return list(load_model(str(spec), "cpu").state_dict().values())


def test_one_short_epoch_raises_robust_accuracy_on_a_fixed_attack(tmp_path):
    out = tmp_path / "hard"
    cfg = HardenConfig(out=out, methods=("pgd",), eps=16, steps=3, epochs=1, samples=640, batch_size=64,
                       check_samples=96, check_steps=5, eps_warmup=0, lr=2e-3, device="cpu")
    record = harden(cfg, show_progress=False)
    before, after = record["metrics"]["check_before"], record["metrics"]["check_after"]
    # the same held-out scenes, the same PGD-5 draws at 16/255, before and after one epoch
    assert after["pgd"] >= before["pgd"] + 0.05, (before, after)  # measured: 0.167 → 0.271
    assert after["clean"] >= 0.9
    assert (out / "model.safetensors").is_file() and (out / "harden.json").is_file()
    assert json.loads((out / "harden.json").read_text()) == json.loads((out / "model.json").read_text()) == record
    assert record["base_model"]["spec"] == "signs" and record["epochs_run"] == 1
    assert record["config"]["methods"] == ["pgd"] and record["versions"]["torch"]
    hardened = load_model(str(out), "cpu")  # a model directory every command takes
    assert hardened.class_names == load_model("signs", "cpu").class_names
    assert not checkpoint_path(out).exists()


@pytest.mark.parametrize("method", ["eot", "occlusion", "fast"])
def test_every_method_trains_and_writes_a_loadable_model(tmp_path, method):
    out = tmp_path / method
    record = harden(HardenConfig(out=out, methods=(method,), eps=16, **{**TINY, "epochs": 1}), show_progress=False)
    check = record["metrics"]["check_after"]
    assert {"clean", "fgsm", "pgd"} <= set(check) and (method not in ("eot", "occlusion") or method in check)
    assert not any(torch.equal(a, b) for a, b in zip(_weights(out), _weights("signs")) if a.is_floating_point() and a.numel() > 100)


def test_an_interrupted_run_resumes_after_its_last_epoch_bit_identically(tmp_path, monkeypatch):
    import physical_adv.harden as hardening

    def cfg(out):
        return HardenConfig(out=out, methods=("pgd", "eot"), eps=16, **TINY)

    whole = harden(cfg(tmp_path / "whole"), show_progress=False)
    real, calls = hardening._train_epoch, []

    def ctrl_c_in_the_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(hardening, "_train_epoch", ctrl_c_in_the_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        harden(cfg(tmp_path / "run"), show_progress=False)
    assert not (tmp_path / "run").exists() and checkpoint_path(tmp_path / "run").is_file()
    monkeypatch.setattr(hardening, "_train_epoch", real)
    resumed = harden(cfg(tmp_path / "run"), show_progress=False)
    assert [h["check"] for h in resumed["history"]] == [h["check"] for h in whole["history"]]
    assert all(torch.equal(a, b) for a, b in zip(_weights(tmp_path / "run"), _weights(tmp_path / "whole")))
    assert not checkpoint_path(tmp_path / "run").exists()


def test_an_image_folder_trains_a_model_of_its_classes(tmp_path):
    data = tmp_path / "data"
    for name in ("stop", "yield"):
        (data / name).mkdir(parents=True)
        for k in range(3):
            img = render_clean(name, 96)
            cv2.imwrite(str(data / name / f"{k}.png"), np.ascontiguousarray(np.roll(img, 4 * k, axis=1)[..., ::-1]))
    record = harden(HardenConfig(out=tmp_path / "m", methods=("occlusion",), data=data, **{**TINY, "epochs": 1}),
                    show_progress=False)
    assert record["data"] == str(data) and record["epochs_run"] == 1


def _assert_nothing_written(tmp_path, out):
    assert not out.exists() and not checkpoint_path(out).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("args, fragment", [
    (["--method", "madry"], "unknown method 'madry'"),
    (["--method", "pgd,pgd"], "given twice"),
    (["--eps", "0"], "eps must be in (0, 64]"),
    (["--eps", "100"], "eps must be in (0, 64]"),
    (["--sticker-area", "0.3"], "--sticker-area must be LO,HI"),
    (["--model", "nope"], "nope"),
])
def test_bad_options_are_one_line_errors_and_write_nothing(tmp_path, capsys, args, fragment):
    out = tmp_path / "m"
    code, _, err = run_cli(capsys, "harden", "--out", out, "--device", "cpu", *args)
    assert_one_line_error(code, err, fragment)
    _assert_nothing_written(tmp_path, out)


def test_a_torchscript_model_cannot_be_trained(tmp_path, capsys):
    model, classes = two_class_torchscript(tmp_path, ["stop", "yield"])
    out = tmp_path / "m"
    code, _, err = run_cli(capsys, "harden", "--out", out, "--model", model, "--classes", classes, "--device", "cpu")
    assert_one_line_error(code, err, "cannot be trained by harden")
    assert not out.exists()


def test_a_data_folder_without_class_subfolders_is_refused(tmp_path, capsys):
    data = tmp_path / "flat"
    data.mkdir()
    cv2.imwrite(str(data / "a.png"), np.zeros((8, 8, 3), np.uint8))
    out = tmp_path / "m"
    code, _, err = run_cli(capsys, "harden", "--out", out, "--data", data, "--device", "cpu")
    assert_one_line_error(code, err, "has no class subfolders")
    (data / "giraffe").mkdir()
    code, _, err = run_cli(capsys, "harden", "--out", out, "--data", data, "--device", "cpu")
    assert_one_line_error(code, err, "'giraffe' names no class")
    assert not out.exists()


def test_an_existing_output_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "m"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "harden", "--out", out, "--device", "cpu")
    assert_one_line_error(code, err, "already exists")
    assert (out / "keep.txt").read_text() == "mine"


def test_the_cli_runs_a_short_epoch_and_says_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "m"
    code, stdout, err = run_cli(capsys, "harden", "--out", out, "--method", "fast", "--epochs", "1", "--samples", "64",
                                "--batch-size", "32", "--check-samples", "16", "--check-steps", "2", "--device", "cpu")
    assert code == 0, err
    assert f"wrote {out}" in stdout and "held-out clean accuracy" in stdout
    assert "epoch 1/1" in stdout + err


@pytest.mark.parametrize("total", [1, 2, 3, 5, 50])
def test_the_learning_rate_schedule_rises_then_falls_for_any_number_of_steps(total):
    from physical_adv.harden import one_cycle

    for warm, linear in ((0.5, True), (0.2, False)):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        sched, lrs = one_cycle(opt, 0.01, total, warm, linear), []
        for _ in range(total):
            lrs.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        peak = lrs.index(max(lrs))
        assert all(0 < v <= 0.01 + 1e-12 for v in lrs) and (total < 5 or lrs[0] <= 0.01 / 25 + 1e-12)
        assert lrs[: peak + 1] == sorted(lrs[: peak + 1]) and lrs[peak:] == sorted(lrs[peak:], reverse=True)
