"""`physical-adv evaluate`: one suite on each model, one table — with real models and real (tiny) attacks."""

import json
import sys
from pathlib import Path

import pytest
import torch

from helpers import assert_one_line_error, run_cli
from physical_adv.evaluate import QUICK, heldout_scenes, load_suite, pgd_robust, weights_fingerprint

# one item of each kind, sized for tests: a few seconds in all on two cores
TINY = """
description = "test suite"

[[items]]
id = "clean"
kind = "clean"
n = 28
scenes = "print"

[[items]]
id = "pgd"
kind = "pgd"
n = 14
eps = 16
steps = 3
restarts = 2

[[items]]
id = "sticker"
kind = "eot"
label = "sticker 25 %"
target = "speed limit 80"
patch = "square"
patch_area = 0.25
steps = 2
samples = 2
eval_samples = 20
texture_size = 64
"""


def _suite(tmp_path, text=TINY, name="tiny.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _rows(record):
    return {(r["item"], r["model"]): r for r in record["rows"]}


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One tiny evaluation of signs with two seeds, run once for the structure tests."""
    tmp = tmp_path_factory.mktemp("ev")
    suite = _suite(tmp)
    out = tmp / "out"
    from physical_adv.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "--model", "signs", "--attacks", str(suite), "--out", str(out), "--seeds", "0,1",
              "--device", "cpu"])
    assert exc.value.code == 0
    return out, json.loads((out / "evaluate.json").read_text())


def test_evaluate_json_has_one_row_per_item_and_model_with_figure_interval_n_and_meaning(evaluated):
    out, record = evaluated
    assert record["schema"] == 1 and record["kind"] == "evaluate" and record["complete"] is True
    assert record["seeds"] == [0, 1] and "torch" in record["versions"]
    assert [i["id"] for i in record["suite"]["items"]] == ["clean", "pgd", "sticker"]
    assert record["models"][0]["spec"] == "signs" and record["models"][0]["sha256"]
    assert [(r["item"], r["model"]) for r in record["rows"]] == [("clean", "signs"), ("pgd", "signs"), ("sticker", "signs")]
    for r in record["rows"]:
        assert r["applies"] is True and 0 <= r["value"] <= 1 and r["n"] > 0 and r["meaning"]
        lo, hi = r["ci95"]
        assert lo <= r["value"] <= hi
    rows = _rows(record)
    assert rows["clean", "signs"]["n"] == 28 and rows["pgd", "signs"]["n"] == 14 and rows["sticker", "signs"]["n"] == 20


def test_clean_row_is_the_training_module_s_held_out_accuracy(evaluated, signs_model):
    from physical_adv.signs.train import evaluate

    _, record = evaluated
    assert _rows(record)["clean", "signs"]["value"] == pytest.approx(evaluate(signs_model, 28, kind="print")["accuracy"])


def test_eot_row_is_the_mean_of_its_seeds_runs_each_a_real_run_directory(evaluated):
    out, record = evaluated
    row = _rows(record)["sticker", "signs"]
    assert [p["seed"] for p in row["per_seed"]] == [0, 1]
    values = []
    for p in row["per_seed"]:
        run = Path(p["run"])
        assert run == out / "runs" / "signs" / f"sticker-seed{p['seed']}"
        rec = json.loads((run / "attack.json").read_text())
        assert rec["config"]["seed"] == p["seed"] and rec["model"]["spec"] == "signs"
        assert rec["target_class"] == "speed limit 80" and rec["config"]["patch_area"] == 0.25
        assert p["value"] == rec["metrics"]["eot_success"] and p["ci95"] == rec["metrics"]["eot_success_ci95"]
        values.append(p["value"])
    assert row["value"] == pytest.approx(sum(values) / 2)
    assert row["min"] == min(values) and row["max"] == max(values)
    assert row["better"] == "lower"
    assert row["ci95_method"] == ("student-t over seeds" if values[0] != values[1] else
                                  "wilson over the pooled draws (every seed agrees)")


def test_pgd_row_counts_only_scenes_correct_clean_and_after_every_restart(evaluated, signs_model):
    _, record = evaluated
    row = _rows(record)["pgd", "signs"]
    assert row["alpha_255"] == pytest.approx(2.5 * 16 / 3, abs=1e-4)
    assert row["value"] <= row["clean_accuracy_same_scenes"]
    images, labels = heldout_scenes(14)
    g = torch.Generator().manual_seed(0)
    clean, robust = pgd_robust(signs_model, images, labels, 16 / 255, 2.5 * 16 / 3 / 255, 3, 2, g)
    assert row["value"] == pytest.approx(float(robust.float().mean()))
    assert not (robust & ~clean).any()


def test_heldout_scenes_are_the_stream_the_clean_accuracy_scores(signs_model):
    from physical_adv.signs.train import evaluate

    images, labels = heldout_scenes(42, "wild")
    with torch.no_grad():
        acc = float((signs_model(images).argmax(1) == labels).float().mean())
    assert acc == pytest.approx(evaluate(signs_model, 42, kind="wild")["accuracy"])


def test_stronger_pgd_leaves_fewer_robust_scenes(signs_model):
    images, labels = heldout_scenes(28)
    rate = {}
    for eps in (1, 32):
        _, robust = pgd_robust(signs_model, images, labels, eps / 255, 2.5 * eps / 5 / 255, 5, 1, torch.Generator().manual_seed(0))
        rate[eps] = float(robust.float().mean())
    assert rate[32] < rate[1]


def test_the_terminal_table_has_a_column_per_model_and_a_row_per_item(tmp_path, capsys):
    suite = _suite(tmp_path, TINY.split("[[items]]\nid = \"pgd\"")[0])  # the clean item only
    code, out, err = run_cli(capsys, "evaluate", "--model", "signs", "--model", "signs-resnet", "--attacks", suite,
                             "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, err
    header = next(line for line in out.splitlines() if "item" in line)
    assert header.index("signs") < header.index("signs-resnet")
    assert "clean accuracy, fresh print scenes" in out and "evaluate.json" in out


def test_two_models_side_by_side_each_get_their_own_attack_runs(tmp_path):
    from physical_adv.evaluate import EvaluateConfig, run_evaluate

    suite = _suite(tmp_path, "[[items]]\n" + TINY.split("[[items]]\n")[-1])  # the sticker only
    out = tmp_path / "o"
    record = run_evaluate(EvaluateConfig(models=("signs", "signs-resnet"), out=out, attacks=str(suite), seeds=(0,),
                                         device="cpu"), show_progress=False)
    rows = _rows(record)
    assert set(rows) == {("sticker", "signs"), ("sticker", "signs-resnet")}
    for spec in ("signs", "signs-resnet"):
        rec = json.loads((out / "runs" / spec / "sticker-seed0" / "attack.json").read_text())
        assert rec["model"]["spec"] == spec  # re-optimised against each model, not one attack scored twice
        assert rows["sticker", spec]["value"] == rec["metrics"]["eot_success"]
    assert [m["spec"] for m in record["models"]] == ["signs", "signs-resnet"]


def test_rerunning_reads_finished_runs_instead_of_recomputing_them(tmp_path, monkeypatch):
    from physical_adv.attack import runner
    from physical_adv.evaluate import EvaluateConfig, run_evaluate

    suite = _suite(tmp_path)
    cfg = EvaluateConfig(models=("signs",), out=tmp_path / "o", attacks=str(suite), seeds=(0,), device="cpu")
    first = run_evaluate(cfg, show_progress=False)
    run = tmp_path / "o" / "runs" / "signs" / "sticker-seed0"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir()}

    def no_attack(*args, **kwargs):
        raise AssertionError("a finished run was recomputed")

    monkeypatch.setattr(runner, "run_attack", no_attack)
    second = run_evaluate(cfg, show_progress=False)
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir()} == before
    r1, r2 = _rows(first), _rows(second)
    assert r2["sticker", "signs"]["per_seed"][0]["reused"] is True
    assert r2["clean", "signs"].get("reused") is True and r2["pgd", "signs"].get("reused") is True
    for key in r1:
        assert r2[key]["value"] == r1[key]["value"]


def test_a_finished_run_made_with_other_options_is_refused_not_reused(tmp_path, capsys):
    sticker = "[[items]]\n" + TINY.split("[[items]]\n")[-1]
    out = tmp_path / "o"
    code, _, err = run_cli(capsys, "evaluate", "-m", "signs", "--attacks", _suite(tmp_path, sticker), "--out", out,
                           "--seeds", "0", "--device", "cpu")
    assert code == 0, err
    other = _suite(tmp_path, sticker.replace("patch_area = 0.25", "patch_area = 0.2"), "other.toml")
    code, _, err = run_cli(capsys, "evaluate", "-m", "signs", "--attacks", other, "--out", out, "--seeds", "0")
    assert_one_line_error(code, err, "patch_area")


def test_a_transfer_row_is_what_the_transfer_check_computes_on_the_run_s_texture(tmp_path, capsys):
    from physical_adv.attack.runner import AttackConfig, _texture_tensor, run_attack
    from physical_adv.attack import eot
    from physical_adv.attack.transfer import TransferTarget, evaluate_transfer
    from physical_adv.images import load_image
    from physical_adv.models import load_model

    run = tmp_path / "run"
    run_attack(AttackConfig(source="sign:stop", out=run, target="speed limit 80", patch="square", patch_area=0.25,
                            steps=3, samples=2, eval_samples=40, texture_size=64, device="cpu"), show_progress=False)
    clean_only = _suite(tmp_path, TINY.split("[[items]]\nid = \"pgd\"")[0].replace("n = 28", "n = 14"))
    code, out, err = run_cli(capsys, "evaluate", "-m", "signs-resnet", "-m", "signs", "--attacks", clean_only,
                             "--runs", run, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, err
    record = json.loads((tmp_path / "o" / "evaluate.json").read_text())
    rows = [r for r in record["rows"] if r["kind"] == "transfer"]
    assert [r["model"] for r in rows] == ["signs-resnet", "signs"]
    assert rows[0]["label"] == f"transfer of {run} (made on signs)"
    assert "transfer of" in out
    rec = json.loads((run / "attack.json").read_text())
    signs, resnet = load_model("signs", "cpu"), load_model("signs-resnet", "cpu")
    adv = _texture_tensor(load_image(run / "adversarial.png"), torch.device("cpu"))
    expected = evaluate_transfer([TransferTarget("signs-resnet", model=resnet)], signs, adv,
                                 eot.load_distribution("print-camera"), 40, rec["seeds"]["heldout"], "stop", "speed limit 80")
    assert rows[0]["value"] == expected["models"][0]["success"] and rows[0]["n"] == 40
    assert rows[0]["ci95"] == expected["models"][0]["success_ci95"]
    # on the model it was made on, the png scores (up to 8-bit rounding) what the run's own held-out check found
    assert abs(rows[1]["value"] - rec["metrics"]["eot_success"]) <= 0.1


def test_models_whose_classes_are_not_the_signs_say_not_applicable(tmp_path, capsys):
    from physical_adv.models.archs import build_arch
    from physical_adv.models.stored import save_model

    names = ["cat", "dog", "bird"]
    save_model(build_arch("signnet", 3, width=8).eval(), tmp_path / "pets", {"made_by": "test"}, arch="signnet",
               arch_kwargs={"width": 8}, input_size=64, class_names=names, mean=(0.5,) * 3, std=(0.25,) * 3)
    code, out, err = run_cli(capsys, "evaluate", "-m", str(tmp_path / "pets"), "--attacks", _suite(tmp_path),
                             "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, err
    rows = json.loads((tmp_path / "o" / "evaluate.json").read_text())["rows"]
    assert [r["applies"] for r in rows] == [False, False, False]
    assert "not the 14 signs classes" in rows[0]["reason"] and "stop" in rows[2]["reason"]
    assert "n/a" in out and not (tmp_path / "o" / "runs").exists()


def test_quick_caps_every_size(tmp_path):
    suite = load_suite("default").quick()
    for item in suite.items:
        if item.kind == "clean":
            assert item.n <= QUICK["clean_n"]
        elif item.kind == "pgd":
            assert (item.n, item.steps, item.restarts) <= (QUICK["pgd_n"], QUICK["pgd_steps"], QUICK["pgd_restarts"])
        else:
            cfg = item.attack_config("signs", 0, tmp_path)
            assert cfg.steps <= QUICK["eot_steps"] and cfg.eval_samples <= QUICK["eot_eval_samples"]
        assert item.title.endswith("[--quick]")


def test_the_default_suite_is_issue_13_s_and_ships_with_the_package():
    suite = load_suite("default")
    by_id = {i.id: i for i in suite.items}
    assert [i.kind for i in suite.items] == ["clean"] * 2 + ["pgd"] * 2 + ["eot"] * 4
    assert (by_id["clean-mixed"].n, by_id["clean-print"].n, by_id["clean-print"].scenes) == (2000, 1000, "print")
    for eps in (8, 16):
        pgd = by_id[f"pgd50-{eps}"]
        assert (pgd.eps, pgd.steps, pgd.restarts, pgd.n) == (eps, 50, 3, 500)
        assert pgd.alpha_value == pytest.approx(2.5 * eps / 50)
    for eps in (16, 32):
        cfg = by_id[f"eot-linf-{eps}"].attack_config("signs", 0, Path("."))
        assert (cfg.eps, cfg.target, cfg.steps, cfg.samples, cfg.eval_samples, cfg.eot) == (eps, None, 300, 32, 1000, "print-camera")
    for area in (10, 25):
        cfg = by_id[f"sticker-{area}"].attack_config("signs", 0, Path("."))
        assert (cfg.patch, cfg.patch_area, cfg.target, cfg.source) == ("square", area / 100, "speed limit 80", "sign:stop")
    if sys.version_info >= (3, 11):
        import tomllib

        root = Path(__file__).resolve().parents[1]
        data = tomllib.loads((root / "pyproject.toml").read_text())
        assert "suites/*.toml" in data["tool"]["setuptools"]["package-data"]["physical_adv"]


BAD_SUITES = {
    "unknown_key": (TINY.replace("scenes = \"print\"", "scenes = \"print\"\nsamples = 3"), "samples"),
    "unknown_kind": (TINY.replace('kind = "pgd"', 'kind = "fgsm"'), "fgsm"),
    "unknown_attack_option": (TINY.replace("steps = 2\n", "steps = 2\nmodel = \"x\"\n"), "model"),
    "bad_value": (TINY.replace("restarts = 2", "restarts = 0"), "restarts"),
    "syntax": ("[[items]\nid = ", "cannot read"),
    "top_level_key": ("suite = 1\n" + TINY, "suite"),
    "duplicate_id": (TINY.replace('id = "pgd"', 'id = "clean"'), "clean"),
}


@pytest.mark.parametrize("name", sorted(BAD_SUITES))
def test_a_bad_suite_is_one_line_naming_the_problem_before_anything_runs(tmp_path, capsys, name):
    text, fragment = BAD_SUITES[name]
    code, _, err = run_cli(capsys, "evaluate", "-m", "signs", "--attacks", _suite(tmp_path, text), "--out", tmp_path / "o")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args, fragment", [
    (["-m", "nosuchmodel"], "unknown model"),
    (["-m", "signs", "--seeds", "0,x"], "--seeds"),
    (["-m", "signs", "--seeds", "1,1"], "--seeds"),
    (["-m", "signs", "-m", "signs"], "twice"),
    (["-m", "signs", "--attacks", "nosuchsuite"], "unknown attack suite"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, fragment):
    code, _, err = run_cli(capsys, "evaluate", *args, "--out", tmp_path / "o")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "o").exists()


def test_an_out_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli(capsys, "evaluate", "-m", "signs", "--out", tmp_path / "f")
    assert_one_line_error(code, err, "is a file")


def test_a_run_directory_without_attack_json_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    code, _, err = run_cli(capsys, "evaluate", "-m", "signs", "--runs", tmp_path / "notarun", "--out", tmp_path / "o")
    assert_one_line_error(code, err, "no attack.json")
    assert not (tmp_path / "o").exists()


def test_weights_fingerprint_changes_with_the_weights(signs_model):
    import copy

    other = copy.deepcopy(signs_model)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert weights_fingerprint(other) != weights_fingerprint(signs_model)
