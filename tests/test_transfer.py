"""Transfer (issue 12): `attack --transfer-to` over the held-out draws, ensemble EOT, and the
transfer techniques (momentum, translation invariance, input diversity) in the one loop."""

import hashlib
import json
import socket

import pytest
import torch

from helpers import assert_one_line_error, run_cli, two_class_torchscript
from physical_adv.attack import eot
from physical_adv.attack.loop import optimize
from physical_adv.attack.objectives import cross_entropy_objective
from physical_adv.attack.threat import LinfBall
from physical_adv.attack.transfer import InputDiversity, Momentum, TranslationInvariance
from physical_adv.images import load_image, to_batch
from physical_adv.models import EnsembleClassifier, load_model

FAST = ["--steps", "3", "--samples", "4", "--texture-size", "64", "--no-early-stop"]


def _attack(capsys, out, *args):
    return run_cli(capsys, "attack", "-s", "sign:stop", "-o", out, *FAST, *args)


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------ the transfer check


def test_transfer_to_the_attacked_model_reproduces_its_heldout_check(capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = _attack(capsys, out, "-t", "speed limit 80", "--patch", "square", "--patch-area", "0.25",
                                "--eval-samples", "60", "--transfer-to", "signs", "--transfer-to", "signs,signs")
    assert code == 0, err
    record = json.loads((out / "attack.json").read_text())
    tr, m = record["transfer"], record["metrics"]
    assert tr["views"]["same_as_heldout_check"] and tr["views"]["draws"] == 60
    assert [t["spec"] for t in tr["models"]] == ["signs", "signs,signs"]
    for t in [tr["source"], *tr["models"]]:  # the same model on the same views: the same verdicts
        assert t["success"] == m["eot_success"] and t["n"] == 60
        assert t["success_ci95"] == m["eot_success_ci95"]
    assert "transfer to signs,signs:" in stdout and "reads the target" in stdout


def test_transfer_to_a_url_counts_every_view_and_the_probe(capsys, tmp_path):
    from physical_adv.blackbox.server import make_app, running_server
    from physical_adv.blackbox.target import ModelTarget

    served = ModelTarget("signs", "label", top_k=1, device="cpu")
    with running_server(make_app(served, budget=None)) as url:
        code, stdout, err = _attack(capsys, tmp_path / "run", "--eps", "32", "--eval-samples", "40",
                                    "--transfer-to", url)
    assert code == 0, err
    row = json.loads((tmp_path / "run" / "attack.json").read_text())["transfer"]["models"][0]
    assert row["kind"] == "url" and row["n"] == 40
    assert (row["queries"], row["probe_queries"]) == (40, 1)
    assert served.queries == 41  # what the server was asked is what the record says
    assert "41 queries" in stdout


@pytest.mark.parametrize("spec, fragment", [
    ("no-such-model", "unknown model"),
    ("signs,", "ensemble"),
])
def test_unknown_transfer_model_is_one_line_error_and_no_run_dir(capsys, tmp_path, spec, fragment):
    code, _, err = _attack(capsys, tmp_path / "run", "--transfer-to", spec)
    assert_one_line_error(code, err, fragment)
    assert not list(tmp_path.iterdir())


def test_closed_transfer_url_fails_before_the_optimisation(capsys, tmp_path, monkeypatch):
    import physical_adv.attack.runner as runner

    def never(*a, **k):
        raise AssertionError("the optimisation started")

    monkeypatch.setattr(runner, "optimise", never)
    with socket.socket() as s:  # a loopback port that was free a moment ago and now has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = _attack(capsys, tmp_path / "run", "--transfer-to", f"http://127.0.0.1:{port}")
    assert_one_line_error(code, err, "cannot connect")
    assert not list(tmp_path.iterdir())


def test_transfer_model_with_other_classes_is_one_line_error(capsys, tmp_path):
    model, classes = two_class_torchscript(tmp_path, ["stop", "yield"])
    runs = tmp_path / "runs"
    runs.mkdir()
    code, _, err = _attack(capsys, runs / "run", "--transfer-to", model, "--classes", classes)
    assert_one_line_error(code, err, "other classes")
    assert not list(runs.iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["--di", "1.5"], "di must be"),
    (["--momentum", "-1"], "momentum"),
    (["--ti-sigma", "100"], "ti-sigma"),
    (["--momentum", "1", "--oracle", "signs", "--budget", "1000"], "white-box"),
])
def test_bad_technique_settings_are_one_line_errors(capsys, tmp_path, args, fragment):
    code, _, err = _attack(capsys, tmp_path / "run", *args)
    assert_one_line_error(code, err, fragment)
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ ensemble EOT


def test_ensemble_eot_runs_one_batched_pass_per_member_per_step(signs_model):
    members = [load_model("signs", "cpu"), load_model("signs", "cpu")]
    ensemble = EnsembleClassifier(members)
    calls = [[], []]
    for k, m in enumerate(members):
        m.register_forward_hook(lambda mod, inp, out, k=k: calls[k].append(inp[0].shape[0]))
    dist = eot.load_distribution("print-camera")
    g = torch.Generator().manual_seed(0)
    texture = to_batch(load_image("sign:stop"), 128)

    def render_views(x):
        return eot.render(x, eot.sample(dist, 6, 128, ensemble.input_size, g))

    objective = lambda logits, y: cross_entropy_objective(logits, y, False)  # noqa: E731
    optimize(ensemble, texture, torch.tensor([0]), threat=LinfBall(8 / 255), objective=objective, steps=4,
             alpha=2 / 255, targeted=False, render_views=render_views)
    assert calls == [[6] * 4, [6] * 4]  # each member: one forward of the whole EOT batch per step


def test_ensemble_attack_run_records_its_members(capsys, tmp_path):
    out = tmp_path / "run"
    code, _, err = _attack(capsys, out, "--model", "signs,signs", "--eps", "32", "--eval-samples", "30")
    assert code == 0, err
    record = json.loads((out / "attack.json").read_text())
    assert record["model"]["spec"] == "signs,signs"
    assert [m["spec"] for m in record["model"]["members"]] == ["signs", "signs"]
    assert record["metrics"]["eot_samples"] == 30 and (out / "eot_preview.png").stat().st_size > 0


# ------------------------------------------------------------------ the techniques


def test_momentum_accumulates_l1_normalised_gradients():
    mi = Momentum(decay=0.5)
    g1, g2 = torch.full((1, 3, 2, 2), 4.0), torch.full((1, 3, 2, 2), -0.1)
    assert torch.allclose(mi(g1), torch.ones_like(g1))  # g / mean|g|
    assert torch.allclose(mi(g2), torch.full_like(g2, 0.5 - 1.0))  # 0.5·v + g/mean|g|


def test_translation_invariance_is_a_normalised_gaussian_blur():
    ti = TranslationInvariance(sigma=2.0)
    impulse = torch.zeros(1, 3, 41, 41)
    impulse[:, :, 20, 20] = 1.0
    out = ti(impulse)
    assert out.shape == impulse.shape
    assert torch.allclose(out.sum((2, 3)), torch.ones(1, 3), atol=1e-5)  # mass kept (far from the border)
    profile = out[0, 0, 20, 20:27]
    assert (profile[1:] < profile[:-1]).all()  # falls off from the centre
    ratio = float(out[0, 0, 20, 22] / out[0, 0, 20, 20])
    assert ratio == pytest.approx(torch.exp(torch.tensor(-0.5)).item(), rel=1e-3)  # one sigma away: e^(−1/2)


def test_input_diversity_leaves_unchosen_views_exactly_and_shrinks_chosen_ones():
    images = torch.rand(64, 3, 32, 32) * 0.5 + 0.5  # no black pixels
    di = InputDiversity(p=0.5, scale=0.8)
    out = di(images, torch.Generator().manual_seed(3))
    chosen = torch.rand(64, generator=torch.Generator().manual_seed(3)) < 0.5
    assert 10 < int(chosen.sum()) < 54
    assert torch.equal(out[~chosen], images[~chosen])
    black = (out[chosen].amax(1) < 0.05).flatten(1).float().mean(1)  # the canvas shows around each shrunk view
    assert (black < 0.5).all() and float((black > 0).float().mean()) > 0.8  # (a factor near 1 leaves no black)
    assert torch.equal(out, di(images, torch.Generator().manual_seed(3)))  # replayable under a seed


def test_gradient_transforms_steer_the_loops_step(signs_model):
    x = to_batch(load_image("sign:stop"), 64)
    objective = lambda logits, y: cross_entropy_objective(logits, y, False)  # noqa: E731
    kw = dict(threat=LinfBall(8 / 255), objective=objective, steps=2, alpha=2 / 255, targeted=False)
    frozen = optimize(signs_model, x, torch.tensor([0]), gradient_transforms=[torch.zeros_like], **kw)
    assert torch.equal(frozen.x, x)  # sign(0) = 0: a transform that kills the gradient stops every step
    plain = optimize(signs_model, x, torch.tensor([0]), **kw)
    same = optimize(signs_model, x, torch.tensor([0]), gradient_transforms=[lambda g: 3 * g], **kw)
    assert torch.equal(plain.x, same.x) and not torch.equal(plain.x, x)


def test_technique_runs_are_deterministic_and_differ_from_plain(capsys, tmp_path):
    args = ["--eps", "32", "--eval-samples", "20"]
    techs = ["--momentum", "1", "--ti-sigma", "1", "--di", "0.5"]
    for name, extra in [("a", techs), ("b", techs), ("plain", [])]:
        code, _, err = _attack(capsys, tmp_path / name, *args, *extra)
        assert code == 0, err
    assert _md5(tmp_path / "a" / "adversarial.png") == _md5(tmp_path / "b" / "adversarial.png")
    assert _md5(tmp_path / "a" / "adversarial.png") != _md5(tmp_path / "plain" / "adversarial.png")
    config = json.loads((tmp_path / "a" / "attack.json").read_text())["config"]
    assert (config["momentum"], config["ti_sigma"], config["di_prob"]) == (1.0, 1.0, 0.5)
