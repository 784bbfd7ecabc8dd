"""The demo: the whole pipeline into one folder, its L∞ attack beside its no-EOT twin, and never
deleting what it did not write."""

import json
from pathlib import Path

import pytest

import physical_adv.demo as demo_module
from helpers import assert_one_line_error, run_cli
from physical_adv.demo import DemoConfig, check_replaceable, print_summary, run_demo
from physical_adv.errors import UserError

FAST = dict(steps=3, eval_samples=20, photos=8, device="cpu")


def _files(folder):
    """Every file under ``folder`` with its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _earlier_demo(folder, stale_run="stale"):
    """A folder as an earlier demo left it: its record, a sheet and a run the new demo does not make."""
    (folder / "runs" / stale_run).mkdir(parents=True)
    (folder / "runs" / stale_run / "attack.json").write_text("{}")
    (folder / "sheet.pdf").write_bytes(b"%PDF-1.4 earlier")
    (folder / "sheet-page9.png").write_bytes(b"earlier preview")
    (folder / "demo.json").write_text(json.dumps({"schema": 2, "kind": "demo", "headline": {}}))
    return folder


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A small demo, run over an earlier one."""
    out = _earlier_demo(tmp_path_factory.mktemp("demo") / "d")
    report = run_demo(DemoConfig(out=out, **FAST))
    return out, report


def test_demo_writes_sheet_capture_and_report(demo):
    out, report = demo
    assert (out / "sheet.pdf").is_file() and (out / "sheet.json").is_file() and (out / "sheet-page1.png").is_file()
    assert (out / "capture" / "report.json").is_file() and (out / "capture" / "report.html").is_file()
    assert [Path(t["run"]).name for t in report["tiles"]] == [
        "sticker", "sticker", "linf", "linf", "linf-no-eot", "linf-no-eot"]
    assert [t["kind"] for t in report["tiles"]] == ["adversarial", "clean"] * 3
    assert report["summary"]["clean"]["accuracy"]["rate"] >= 0.95


def test_demo_makes_its_linf_attack_at_32_with_a_no_eot_twin_checked_on_print_camera_draws(demo):
    out, _ = demo
    linf = json.loads((out / "runs" / "linf" / "attack.json").read_text())["config"]
    twin = json.loads((out / "runs" / "linf-no-eot" / "attack.json").read_text())["config"]
    assert linf["eps"] == twin["eps"] == 32.0
    assert linf["eot"] == "print-camera" and twin["eot"] == "none" and twin["eval_eot"] == "print-camera"
    assert {k: v for k, v in linf.items() if k not in ("eot", "eval_eot", "out")} == \
           {k: v for k, v in twin.items() if k not in ("eot", "eval_eot", "out")}
    assert not (out / "runs" / "sticker-no-eot").exists()  # behind --baselines


def test_demo_records_its_headline_from_the_report(demo):
    out, report = demo
    record = json.loads((out / "demo.json").read_text())
    assert record["kind"] == "demo" and record["schema"] == 2
    rate = {(Path(t["run"]).name, t["kind"]): t for t in report["tiles"]}
    assert record["headline"] == {
        "sticker_targeted_success": rate["sticker", "adversarial"]["targeted_success"],
        "linf_untargeted_success": rate["linf", "adversarial"]["untargeted_success"],
        "linf_no_eot_untargeted_success": rate["linf-no-eot", "adversarial"]["untargeted_success"],
        "clean_accuracy": report["summary"]["clean"]["accuracy"]["rate"],
    }
    assert record["sheet"] == str(out / "sheet.pdf") and record["report"] == str(out / "capture" / "report.html")


def test_demo_replaces_an_earlier_demo_whole(demo):
    out, _ = demo
    assert not (out / "runs" / "stale").exists() and not (out / "sheet-page9.png").exists()
    assert (out / "sheet.pdf").read_bytes().startswith(b"%PDF") and b"earlier" not in (out / "sheet.pdf").read_bytes()
    assert [p.name for p in out.parent.iterdir()] == ["d"]  # no building or replaced folder left beside it


def test_every_path_the_demo_records_names_its_final_folder(demo):
    out, report = demo
    for path in out.rglob("*"):
        if path.suffix in (".json", ".jsonl", ".html"):
            assert ".physical-adv-demo." not in path.read_text(), path
    manifest = json.loads((out / "sheet.json").read_text())
    for tile in manifest["tiles"]:
        assert (out / "runs" / Path(tile["run"]).name).samefile(tile["run"])
    session = json.loads((out / "capture" / "session.json").read_text())
    assert session["sheet"] == str(out / "sheet.json")


def test_demo_summary_prints_undefined_rates_as_such(capsys):
    print_summary({"sheet": "d/sheet.pdf", "preview": "d/sheet-page1.png", "report": "d/capture/report.html",
                   "seconds": 12.0, "config": {"linf_eps_255": 32.0},
                   "headline": {"sticker_targeted_success": None, "linf_untargeted_success": 0.5,
                                "linf_no_eot_untargeted_success": None, "clean_accuracy": 1.0}})
    out = capsys.readouterr().out
    assert "targeted success undefined" in out
    assert "untargeted success 50.0% with EOT, undefined without" in out


def test_demo_refuses_a_non_empty_folder_that_is_not_a_demo(capsys, tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "demo", "--out", str(tmp_path))
    assert_one_line_error(code, err, "not an earlier demo")
    assert (tmp_path / "keep.txt").read_text() == "mine"


def test_demo_refuses_a_folder_whose_demo_json_another_tool_wrote(capsys, tmp_path):
    (tmp_path / "demo.json").write_text(json.dumps({"schema": 7, "kind": "experiment", "notes": "mine"}))
    (tmp_path / "data.csv").write_text("1,2\n")
    before = _files(tmp_path)
    code, _, err = run_cli(capsys, "demo", "--out", str(tmp_path))
    assert_one_line_error(code, err, "was not written by physical-adv demo")
    assert _files(tmp_path) == before


def test_demo_refuses_an_earlier_demo_that_also_holds_the_users_files(capsys, tmp_path):
    folder = _earlier_demo(tmp_path / "d")
    (folder / "my-notes.txt").write_text("printed on the office laser, 3rd floor")
    before = _files(folder)
    code, _, err = run_cli(capsys, "demo", "--out", str(folder))
    assert_one_line_error(code, err, "my-notes.txt")
    assert _files(folder) == before


def test_a_demo_interrupted_midway_leaves_the_earlier_demo_exactly_as_it_was(tmp_path, monkeypatch):
    folder = _earlier_demo(tmp_path / "d")
    before = _files(folder)
    real_run_attack, calls = demo_module.run_attack, []

    def ctrl_c_during_the_second_attack(cfg):  # the first attack's run directory is written by then
        calls.append(cfg.out)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_attack(cfg)

    monkeypatch.setattr(demo_module, "run_attack", ctrl_c_during_the_second_attack)
    with pytest.raises(KeyboardInterrupt):
        run_demo(DemoConfig(out=folder, **FAST))
    assert len(calls) == 2 and _files(folder) == before
    assert [p.name for p in tmp_path.iterdir()] == ["d"]  # the half-built demo is gone


def test_an_earlier_demo_of_the_first_schema_is_recognised_as_one(tmp_path):
    (tmp_path / "demo.json").write_text(json.dumps(dict.fromkeys(
        ("schema", "created", "config", "sheet", "report", "headline", "seconds", "versions"), None) | {"schema": 1}))
    (tmp_path / "sheet.pdf").write_bytes(b"%PDF")
    check_replaceable(tmp_path)  # no error: it may be replaced
    (tmp_path / "demo.json").write_text(json.dumps({"schema": 1, "headline": {}}))
    with pytest.raises(UserError, match="not written by physical-adv demo"):
        check_replaceable(tmp_path)


@pytest.mark.slow
def test_full_demo_meets_its_sticker_and_control_targets(tmp_path):
    report = run_demo(DemoConfig(out=tmp_path / "demo", device="cpu"))
    tiles = {(Path(t["run"]).name, t["kind"]): t for t in report["tiles"]}
    assert tiles["sticker", "adversarial"]["targeted_success"] >= 0.9
    assert tiles["linf", "adversarial"]["untargeted_success"] >= 0.8
    assert tiles["linf-no-eot", "adversarial"]["untargeted_success"] <= 0.5
    assert report["summary"]["clean"]["accuracy"]["rate"] >= 0.95


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_replace_folder_swaps_in_the_new_folder_whole_and_removes_the_old(tmp_path, monkeypatch, exchange):
    import physical_adv.artifacts as artifacts

    if not exchange:
        monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)  # a system without renameat2
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    (tmp_path / "new" / "sub").mkdir(parents=True)
    (tmp_path / "new" / "sub" / "new.txt").write_text("new")
    artifacts.replace_folder(tmp_path / "new", tmp_path / "out")
    assert _files(tmp_path) == {"out/sub/new.txt": b"new"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
