"""calibrate: the printer and camera channel recovered from the sheet's chart on simulate photos
whose channel is fixed and known; the TOML and chart image it writes; one-line errors that
write nothing."""

import json

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import numpy as np
import pytest

from capture_sheets import make_test_sheet
from helpers import assert_one_line_error, run_cli
from physical_adv.capture import CaptureConfig, run_capture
from physical_adv.simulate import Channel, SimulateConfig, simulate

# three printers and cameras: a good one, a washed-out one (black 0.2, white 0.85), a warm dark one
SETTINGS = {
    "good": dict(saturation=0.92, black=0.05, white=0.96, tone=4.5, tint=(0.0, 0.0, 0.01), exposure=1.0,
                 white_balance=(1.0, 1.0, 1.0), gamma=1.0, lighting=0.0),
    "washed": dict(saturation=0.75, black=0.2, white=0.85, tone=5.0, tint=(0.0, 0.01, 0.03), exposure=1.05,
                   white_balance=(1.05, 1.0, 0.92), gamma=1.1, lighting=0.0),
    "warm": dict(saturation=0.85, black=0.1, white=0.92, tone=6.5, tint=(0.0, 0.02, 0.05), exposure=0.9,
                 white_balance=(1.1, 1.0, 0.88), gamma=0.9, lighting=0.0),
}


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    sheet = make_test_sheet(root / "sheet")
    out = {}
    for name, channel in SETTINGS.items():
        simulate(SimulateConfig(pdf=sheet.pdf, out=root / name, n=12, seed=2, channel=Channel(**channel)), show_progress=False)
        out[name] = root / f"c-{name}"
        run_capture(CaptureConfig(sheet=sheet.manifest_path, images=root / name, out=out[name], window=False, device="cpu"),
                    show_progress=False)
    return sheet, out


@pytest.mark.parametrize("name", list(SETTINGS))
def test_calibrate_recovers_the_channel_to_3_in_255_on_held_out_patches(capsys, captures, tmp_path, name):
    _, folders = captures
    out = tmp_path / f"{name}.toml"
    code, stdout, _ = run_cli(capsys, "calibrate", folders[name], "--out", out)
    assert code in (0, None)
    cal = tomllib.loads(out.read_text())
    assert cal["calibration"]["heldout_patches"] >= 30 and cal["calibration"]["heldout_error"] <= 3.0, cal["calibration"]
    assert "held-out patches" in stdout and "worst patches" in stdout
    assert len(cal["palette"]["colours"]) == cal["calibration"]["patches_seen"]
    assert np.array(cal["model"]["curve_out"]).shape == (3, len(cal["model"]["curve_in"]))
    assert out.with_suffix(".png").stat().st_size > 1000


def test_the_fitted_model_predicts_the_known_channel_not_just_the_readings(captures):
    """On the washed-out printer, the model's grey ramp against simulate's own formula."""
    from physical_adv.calibrate import calibrate, load_readings

    _, folders = captures
    cal = calibrate(load_readings([folders["washed"]]))
    ch = SETTINGS["washed"]
    v = np.linspace(0, 1, 21)
    k = ch["tone"]
    lo, hi = 1 / (1 + np.exp(k / 2)), 1 / (1 + np.exp(-k / 2))
    printed = ch["black"] + (ch["white"] - ch["black"]) * (0.5 * v + 0.5 / (hi - lo) * (1 / (1 + np.exp(-k * (v - 0.5))) - lo))
    gain = ch["exposure"] * np.array(ch["white_balance"]) * (1 - np.array(ch["tint"]))
    truth = np.clip(printed[:, None] * gain, 0, 1) ** ch["gamma"]
    predicted = cal.model.apply(np.repeat(v[:, None], 3, 1))
    assert np.abs(predicted - truth).max() * 255 < 4.0, np.abs(predicted - truth).max() * 255


def _damaged(folder, tmp_path, rewrite):
    """A copy of a capture folder with its chart log rewritten by ``rewrite(lines) -> lines``."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    lines = [json.loads(line) for line in (copy / "chart.jsonl").read_text().splitlines()]
    (copy / "chart.jsonl").write_text("".join(json.dumps(line) + "\n" for line in rewrite(lines)))
    return copy


@pytest.mark.parametrize("case, fragment", [
    ("no chart in view", "the calibration chart was not read in any frame"),
    ("too few patches", "only 50 of 186 chart patches were seen"),
])
def test_a_capture_without_enough_of_the_chart_is_a_one_line_error_that_writes_nothing(capsys, captures, tmp_path,
                                                                                      case, fragment):
    _, folders = captures
    if case == "no chart in view":
        folder = _damaged(folders["good"], tmp_path, lambda lines: [])
    else:
        folder = _damaged(folders["good"], tmp_path, lambda lines: [
            {**line, "rgb": [c if i < 50 else None for i, c in enumerate(line["rgb"])]} for line in lines])
    out = tmp_path / "cal.toml"
    code, _, err = run_cli(capsys, "calibrate", folder, "--out", out)
    assert_one_line_error(code, err, fragment)
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_a_chart_from_another_sheet_is_a_one_line_error_that_writes_nothing(capsys, captures, tmp_path):
    _, folders = captures
    other = make_test_sheet(tmp_path / "other", runs=(("yield", "signs"),))
    simulate(SimulateConfig(pdf=other.pdf, out=tmp_path / "p", n=2, seed=1), show_progress=False)
    run_capture(CaptureConfig(sheet=other.manifest_path, images=tmp_path / "p", out=tmp_path / "c", window=False, device="cpu"),
                show_progress=False)
    capsys.readouterr()  # capture's own warnings
    out = tmp_path / "cal.toml"
    code, _, err = run_cli(capsys, "calibrate", folders["good"], tmp_path / "c", "--out", out)
    assert_one_line_error(code, err, "its chart is another sheet's")
    assert not out.exists() and not out.with_suffix(".png").exists()


def _as_photographed(capture, tmp_path):
    """A copy of a simulated capture whose photos no longer say they were simulated (their
    folder without simulate's ground truth), as if a camera had taken them."""
    import shutil

    record = json.loads((capture / "session.json").read_text())
    photos = tmp_path / "photos"
    shutil.copytree(record["source"]["folder"], photos)
    (photos / "ground_truth.json").unlink()
    copy = tmp_path / "photographed"
    shutil.copytree(capture, copy)
    record["source"]["folder"] = str(photos)
    (copy / "session.json").write_text(json.dumps(record))
    return copy


def test_the_report_shows_the_calibration_and_simulated_beside_photographed_survival(capsys, captures, tmp_path):
    _, folders = captures
    photographed = _as_photographed(folders["washed"], tmp_path)
    out = tmp_path / "report"
    code, stdout, _ = run_cli(capsys, "report", photographed, folders["good"], "--out", out)
    assert code in (0, None)
    report = json.loads((out / "report.json").read_text())
    cal = report["calibration"]
    assert cal["photographed"] and cal["sessions"] == [str(photographed)] and cal["heldout_error"] <= 3.0
    rows = {r["tile_id"]: r for r in report["simulated_vs_captured"]}
    assert set(rows) == {"01", "02", "03", "04"}
    assert all(r["simulated"]["n"] > 0 and r["captured"]["n"] > 0 for r in rows.values())
    assert rows["02"]["rate"] == "accuracy" and rows["01"]["rate"] == "untargeted_success"
    page = (out / "report.html").read_text()
    assert 'id="channel"' in page and 'class="calibration-plot"' in page and 'data-tile="04"' in page
    assert "colour calibration from the chart" in stdout and "simulated → photographed" in stdout


def test_a_report_of_simulated_sessions_only_has_no_gap_but_calibrates_the_simulator(captures, tmp_path):
    from physical_adv.report import compute_report, pool

    _, folders = captures
    report = compute_report(pool([folders["good"]]))
    assert "simulated_vs_captured" not in report
    assert report["calibration"]["photographed"] is False and report["calibration"]["heldout_error"] <= 3.0


def test_the_channel_as_a_torch_stage_equals_the_fit_and_passes_gradients(capsys, captures, tmp_path):
    import torch

    from physical_adv.attack.calibrated import load_calibration
    from physical_adv.calibrate import calibrate, load_readings

    _, folders = captures
    out = tmp_path / "cal.toml"
    run_cli(capsys, "calibrate", folders["warm"], "--out", out)
    stage = load_calibration(out)
    model = calibrate(load_readings([folders["warm"]])).model
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y = stage.apply(x)
    expected = model.apply(x.detach().permute(0, 2, 3, 1).reshape(-1, 3).numpy().astype(np.float64))
    got = y.detach().permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    assert np.abs(got - expected).max() < 2e-3  # the TOML's six digits
    y.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs() > 0).float().mean() > 0.99
    assert stage.palette.shape[1] == 3 and len(stage.palette) > 100 and (stage.spread > 0).all()


@pytest.mark.parametrize("text, fragment", [
    ("[printer]\nblack = 0.1\n", "is not a calibration"),
    ("[calibration]\n[model]\nmatrix = [1, 2]\n", "malformed [model] table"),
])
def test_a_file_that_is_not_a_calibration_is_a_one_line_error(tmp_path, text, fragment):
    from physical_adv.attack.calibrated import load_calibration
    from physical_adv.errors import UserError

    path = tmp_path / "x.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        load_calibration(path)


def test_a_chart_only_sheet_is_captured_and_calibrated(capsys, tmp_path):
    from physical_adv.sheet import SheetConfig

    code, _, _ = run_cli(capsys, "sheet", "--calibration-only", "--out", tmp_path / "chart.pdf")
    assert code in (0, None)
    manifest = json.loads((tmp_path / "chart.json").read_text())
    assert manifest["tiles"] == [] and len(manifest["markers"]) == 8 and len(manifest["calibration"]["patches"]) > 500
    simulate(SimulateConfig(pdf=tmp_path / "chart.pdf", out=tmp_path / "p", n=6, seed=3,
                            channel=Channel(**SETTINGS["washed"])), show_progress=False)
    run_capture(CaptureConfig(sheet=tmp_path / "chart.json", images=tmp_path / "p", out=tmp_path / "c", window=False,
                              device="cpu"), show_progress=False)
    capsys.readouterr()
    code, _, _ = run_cli(capsys, "calibrate", tmp_path / "c", "--out", tmp_path / "cal.toml")
    assert code in (0, None)
    cal = tomllib.loads((tmp_path / "cal.toml").read_text())["calibration"]
    assert cal["heldout_patches"] > 100 and cal["heldout_error"] <= 3.0
    with pytest.raises(ValueError, match="takes no run directories"):
        SheetConfig(runs=("r",), calibration_only=True)
    code, _, err = run_cli(capsys, "sheet", "--out", tmp_path / "none.pdf")
    assert_one_line_error(code, err, "give at least one run directory (or --calibration-only")


def test_any_chart_log_gives_a_calibration_or_one_clear_error(captures, tmp_path_factory):
    """Fuzzed chart.jsonl lines (any JSON, wrong lengths, strings, NaN, out-of-range values)
    beside real ones: calibrate either fits or raises a UserError, never anything else."""
    import shutil

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from physical_adv.calibrate import calibrate, load_readings
    from physical_adv.errors import UserError

    _, folders = captures
    real = (folders["good"] / "chart.jsonl").read_text().splitlines()[:2]
    n = len(json.loads(real[0])["rgb"])
    value = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-300, 300), st.text(max_size=3),
                      st.lists(st.floats(-10, 300), min_size=0, max_size=4))
    line = st.one_of(st.fixed_dictionaries({"rgb": st.lists(value, min_size=n, max_size=n)}),
                     st.dictionaries(st.text(max_size=4), value, max_size=3), st.lists(value, max_size=3))
    root = tmp_path_factory.mktemp("fuzz")

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(line, max_size=4), st.booleans())
    def check(lines, keep_real):
        folder = root / "c"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(folders["good"], folder)
        text = [json.dumps(l, allow_nan=True) for l in lines] + (real if keep_real else [])
        (folder / "chart.jsonl").write_text("\n".join(text) + "\n")
        try:
            calibrate(load_readings([folder]))
        except UserError:
            pass

    check()


def test_nps_against_the_measured_palette(capsys, captures, tmp_path):
    import torch

    from physical_adv.attack.calibrated import load_calibration
    from physical_adv.attack.objectives import non_printability

    _, folders = captures
    cal_file = tmp_path / "cal.toml"
    run_cli(capsys, "calibrate", folders["washed"], "--out", cal_file)
    palette = load_calibration(cal_file).palette
    on_palette = palette[torch.arange(64) % len(palette)].T.reshape(1, 3, 8, 8)
    off = torch.zeros(1, 3, 8, 8, requires_grad=True)  # pure black: the washed-out printer cannot print it
    assert non_printability(on_palette, palette) < 1e-6 and non_printability(off, palette) > 0.25
    non_printability(off, palette).backward()
    assert torch.isfinite(off.grad).all() and off.grad.abs().sum() > 0
    out = tmp_path / "run"
    code, _, _ = run_cli(capsys, "attack", "--source", "sign:stop", "--out", out, "--steps", "2", "--samples", "4",
                         "--eval-samples", "8", "--texture-size", "64", "--nps", "0.5", "--palette", cal_file, "--device", "cpu")
    assert code in (0, None)
    assert json.loads((out / "attack.json").read_text())["config"]["palette"] == str(cal_file)
    code, _, err = run_cli(capsys, "attack", "--source", "sign:stop", "--out", tmp_path / "r2", "--palette", cal_file)
    assert_one_line_error(code, err, "give its weight with --nps W")


def test_attack_eot_takes_a_calibration_and_renders_through_the_measured_channel(capsys, captures, tmp_path):
    import torch

    from physical_adv.attack import eot

    _, folders = captures
    cal_file = tmp_path / "washed.toml"
    run_cli(capsys, "calibrate", folders["washed"], "--out", cal_file)
    dist = eot.load_distribution(str(cal_file))
    assert dist.calibration is not None and dist.name == "calibrated:washed.toml"
    assert dist.paper_white == (1.0, 1.0) and dist.black_level == (0.0, 0.0) and dist.scale == eot.load_distribution("print-camera").scale
    white = torch.ones(1, 3, 64, 64, requires_grad=True)
    params = eot.sample(dist, 16, 64, 32, torch.Generator().manual_seed(0))
    out = eot.render(white, params)
    expected = dist.calibration.apply(torch.ones(1, 3, 1, 1)).view(3)  # the washed-out paper white as photographed
    centre = out[:, :, 12:20, 12:20].mean((0, 2, 3))
    assert (centre - expected).abs().max() < 0.06 and expected.max() < 0.95, (centre, expected)
    out.sum().backward()
    assert torch.isfinite(white.grad).all() and white.grad.abs().sum() > 0
    # recorded by its file, and read back equal (evaluate rebuilds recorded distributions)
    data = eot.distribution_to_dict(dist)
    assert data["calibration"] == str(cal_file)
    again = eot.EOTDistribution(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
    assert again.calibration is not None and again.brightness == dist.brightness
    run = tmp_path / "run"
    code, _, _ = run_cli(capsys, "attack", "--source", "sign:stop", "--out", run, "--steps", "2", "--samples", "4",
                         "--eval-samples", "8", "--texture-size", "64", "--eot", cal_file, "--device", "cpu")
    assert code in (0, None)
    record = json.loads((run / "attack.json").read_text())
    assert record["eot_distribution"]["calibration"] == str(cal_file)
    assert record["eval_distribution"]["calibration"] == str(cal_file)
