"""White-box attacks against an independent implementation, and the attack run's contract."""

import json

import cv2
import numpy as np
import pytest
import torch

from physical_adv.attack.runner import AttackConfig, build_mask, run_attack
from physical_adv.attack.whitebox import fgsm, pgd
from helpers import run_cli
from physical_adv.images import load_image, to_batch
from physical_adv.signs import CLASS_NAMES

torchattacks = pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def sign_batch():
    return torch.cat([to_batch(load_image(f"sign:{n}"), 64) for n in CLASS_NAMES[:6]]), torch.arange(6)


@pytest.mark.parametrize("eps", [2 / 255, 8 / 255])
def test_fgsm_matches_torchattacks_exactly(signs_model, sign_batch, eps):
    x, y = sign_batch
    assert torch.equal(fgsm(signs_model, x, y, eps), torchattacks.FGSM(signs_model, eps=eps)(x, y))


def test_targeted_fgsm_matches_torchattacks_exactly(signs_model, sign_batch):
    x, _ = sign_batch
    t = torch.full((len(x),), 5)
    ref = torchattacks.FGSM(signs_model, eps=8 / 255)
    ref.set_mode_targeted_by_function(lambda images, labels: t)
    assert torch.equal(fgsm(signs_model, x, t, 8 / 255, targeted=True), ref(x, t))


def test_pgd_linf_matches_torchattacks_exactly(signs_model, sign_batch):
    x, y = sign_batch
    torch.manual_seed(0)
    ours = pgd(signs_model, x, y, eps=8 / 255, alpha=2 / 255, steps=5)
    torch.manual_seed(0)
    ref = torchattacks.PGD(signs_model, eps=8 / 255, alpha=2 / 255, steps=5)(x, y)
    assert torch.equal(ours, ref)


def test_pgd_l2_matches_torchattacks(signs_model, sign_batch):
    x, y = sign_batch
    ours = pgd(signs_model, x, y, eps=1.0, alpha=0.2, steps=5, random_start=False, norm="l2")
    ref = torchattacks.PGDL2(signs_model, eps=1.0, alpha=0.2, steps=5, random_start=False)(x, y)
    assert torch.allclose(ours, ref, atol=1e-6)
    assert ((ours - x).flatten(1).norm(dim=1) <= 1.0 + 1e-4).all()


def test_pgd_stays_in_budget_and_in_range(signs_model, sign_batch):
    x, y = sign_batch
    adv = pgd(signs_model, x, y, eps=16 / 255, alpha=4 / 255, steps=5)
    assert (adv - x).abs().max() <= 16 / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1


def _cfg(tmp_path, name="run", **kw):
    base = dict(source="sign:stop", out=tmp_path / name, steps=3, samples=4, eval_samples=20, texture_size=128, device="cpu")
    base.update(kw)
    return AttackConfig(**base)


def test_run_directory_holds_every_artifact(tmp_path):
    result = run_attack(_cfg(tmp_path, target="speed limit 80"), show_progress=False)
    names = {p.name for p in result.out.iterdir()}
    assert names == {"adversarial.png", "clean.png", "perturbation.png", "attack.json", "progress.csv", "eot_preview.png"}
    record = json.loads((result.out / "attack.json").read_text())
    assert record["schema"] == 1 and record["true_class"] == "stop" and record["target_class"] == "speed limit 80"
    m = record["metrics"]
    assert 0 <= m["eot_success"] <= 1 and m["eot_samples"] == 20 and len(m["eot_success_ci95"]) == 2
    assert m["linf_255"] <= 16.0 + 1e-3
    assert "torch" in record["versions"] and record["seeds"]["seed"] == 0
    adv = cv2.imread(str(result.out / "adversarial.png"))
    assert adv.shape == (128, 128, 3)
    assert len((result.out / "progress.csv").read_text().splitlines()) == 1 + m["steps_run"]


def test_same_seed_gives_the_same_result(tmp_path):
    a = run_attack(_cfg(tmp_path, "a", seed=7), show_progress=False)
    b = run_attack(_cfg(tmp_path, "b", seed=7), show_progress=False)
    assert (a.out / "adversarial.png").read_bytes() == (b.out / "adversarial.png").read_bytes()
    assert a.record["metrics"]["eot_success"] == b.record["metrics"]["eot_success"]


def test_patch_mode_leaves_pixels_outside_mask_untouched(tmp_path):
    cfg = _cfg(tmp_path, patch="circle", patch_area=0.2, target="speed limit 80")
    result = run_attack(cfg, show_progress=False)
    adv = load_image(result.out / "adversarial.png")
    clean = load_image(result.out / "clean.png")
    mask = build_mask(cfg, 128) > 0
    assert np.array_equal(adv[~mask], clean[~mask])
    assert not np.array_equal(adv[mask], clean[mask])
    assert abs(result.record["patch_fraction"] - 0.2) < 0.02


def test_mask_file_is_resized_to_the_texture(tmp_path):
    mask = np.zeros((40, 40), np.uint8)
    mask[10:20, 5:35] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    m = build_mask(_cfg(tmp_path, mask=str(tmp_path / "mask.png")), 128)
    assert m.shape == (128, 128) and abs(m.mean() - 300 / 1600) < 0.02




@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--eps", "-3"], "eps must be in (0, 255]"),
        (["--steps", "0"], "steps must be ≥ 1"),
        (["--eot", "no-such-preset"], "unknown EOT preset"),
        (["--target", "speed limit 90"], "unknown target class"),
        (["--patch", "triangle"], "patch must be one of"),
        (["--mask", "MASK"], "must be square"),
    ],
)
def test_bad_attack_options_fail_cleanly_without_a_run_dir(capsys, tmp_path, args, fragment):
    bad_mask = np.full((30, 60), 255, np.uint8)
    cv2.imwrite(str(tmp_path / "wide.png"), bad_mask)
    args = [str(tmp_path / "wide.png") if a == "MASK" else a for a in args]
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "attack", "--source", "sign:stop", "--steps", "2", "--eval-samples", "10", "--out", str(out), *args)
    assert code == 2, err
    assert err.strip().startswith("physical-adv: error:") and fragment in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert not any(p.name.startswith(".run") for p in tmp_path.iterdir())


def test_attack_cli_writes_a_run(capsys, tmp_path):
    out = tmp_path / "cli-run"
    code, _, err = run_cli(capsys, "attack", "--source", "sign:yield", "--steps", "2", "--samples", "4", "--eval-samples", "10",
                        "--texture-size", "128", "--out", str(out), "--device", "cpu")
    assert code == 0, err
    assert (out / "attack.json").is_file()


def test_default_sticker_attack_survives_print_camera(tmp_path):
    """Issue contract: a sticker of at most 25 % of the tile toward speed limit 80, default settings, ≥ 90 %."""
    cfg = AttackConfig(source="sign:stop", out=tmp_path / "sticker", target="speed limit 80", patch="square",
                       patch_area=0.25, device="cpu")
    record = run_attack(cfg, show_progress=False).record
    assert record["patch_fraction"] <= 0.25
    assert record["metrics"]["eot_success"] >= 0.9, record["metrics"]


@pytest.mark.slow
def test_default_untargeted_linf_attack_figure(tmp_path):
    """The README's figure (a): untargeted L∞ at 16/255 with default settings (reported, not a threshold:
    the signs model resists it; see README). Checks the run completes and beats the clean image."""
    record = run_attack(AttackConfig(source="sign:stop", out=tmp_path / "linf", device="cpu"), show_progress=False).record
    assert record["metrics"]["eot_success"] >= record["metrics"]["clean_eot_success"]
    assert record["metrics"]["linf_255"] <= 16.0 + 1e-3
