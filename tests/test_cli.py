"""The command-line contract: help, version, one-line errors with exit code 2, classify output."""

import errno
import json
import re
import subprocess
import sys

import pytest
import typer

from physical_adv import __version__
from physical_adv.cli import app
from physical_adv.errors import os_error_message
from helpers import assert_one_line_error, run_cli

COMMANDS = typer.main.get_command(app).commands  # name → click command, as registered


def _flat(text):
    """Help text without rich's box drawing and line wrapping, for substring checks."""
    return " ".join(re.sub("[│╭╮╰╯─]", " ", text).split())


def test_root_help_lists_every_command_with_its_own_summary(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    flat = _flat(out)
    for name, command in COMMANDS.items():
        summary = _flat(command.help.splitlines()[0])
        assert f" {name} {summary}" in flat, name


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_commands_help_explains_every_option_and_argument(capsys, name):
    code, out, _ = run_cli(capsys, name, "--help")
    assert code == 0
    flat = _flat(out)
    command = COMMANDS[name]
    assert _flat(command.help.split("\n\n")[0]) in flat
    for param in command.params:
        assert param.help, f"{name}: {param.name} has no help text"
        assert _flat(param.help) in flat, (name, param.name)
        if param.param_type_name == "option":
            assert all(opt in flat for opt in param.opts), (name, param.opts)


def test_version_prints_package_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and __version__ in out


def test_console_script_module_entry_runs():
    proc = subprocess.run([sys.executable, "-m", "physical_adv", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and __version__ in proc.stdout


def test_classify_json_has_documented_shape(capsys):
    code, out, _ = run_cli(capsys, "classify", "sign:stop", "sign:speed limit 80", "--json", "--top-k", "3")
    assert code == 0
    results = json.loads(out)
    assert [r["path"] for r in results] == ["sign:stop", "sign:speed limit 80"]
    for r, expected in zip(results, ("stop", "speed limit 80")):
        assert len(r["top"]) == 3
        assert set(r["top"][0]) == {"class", "prob"}
        assert r["top"][0]["class"] == expected
        assert r["top"][0]["prob"] >= r["top"][1]["prob"] >= r["top"][2]["prob"]


def test_classify_rendered_sign_files_gives_right_class(capsys, tmp_path):
    from physical_adv.images import save_png
    from physical_adv.signs import render_clean

    paths = []
    for name in ("yield", "no entry", "speed limit 30", "speed limit 50"):
        path = tmp_path / f"{name.replace(' ', '_')}.png"
        save_png(path, render_clean(name, 300))
        paths.append(str(path))
    code, out, _ = run_cli(capsys, "classify", *paths, "--json")
    assert code == 0
    assert [r["top"][0]["class"] for r in json.loads(out)] == ["yield", "no entry", "speed limit 30", "speed limit 50"]


def test_missing_image_is_one_line_error(capsys, tmp_path):
    code, _, err = run_cli(capsys, "classify", str(tmp_path / "nope.png"))
    assert_one_line_error(code, err, "image not found")


def test_text_file_named_png_is_one_line_error(capsys, tmp_path):
    fake = tmp_path / "fake.png"
    fake.write_text("this is not an image\n")
    code, _, err = run_cli(capsys, "classify", str(fake))
    assert_one_line_error(code, err, "cannot read")


def test_unknown_model_is_one_line_error(capsys):
    code, _, err = run_cli(capsys, "classify", "sign:stop", "--model", "no-such-model")
    assert_one_line_error(code, err, "unknown model")


def test_unknown_torchvision_model_is_one_line_error(capsys):
    code, _, err = run_cli(capsys, "classify", "sign:stop", "--model", "torchvision:not_a_net")
    assert_one_line_error(code, err, "unknown torchvision classifier")


def test_unknown_class_list_file_is_one_line_error(capsys, tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"x")
    code, _, err = run_cli(capsys, "classify", "sign:stop", "--model", str(model), "--classes", str(tmp_path / "none.txt"))
    assert_one_line_error(code, err, "class list file not found")


def test_unknown_sign_class_is_one_line_error(capsys):
    code, _, err = run_cli(capsys, "classify", "sign:speed limit 90")
    assert_one_line_error(code, err, "unknown sign class")


def test_bad_option_value_is_one_line_error(capsys):
    code, _, err = run_cli(capsys, "classify", "sign:stop", "--top-k", "0")
    assert_one_line_error(code, err, "top-k")


def test_unknown_option_is_one_line_error(capsys):
    code, _, err = run_cli(capsys, "classify", "sign:stop", "--frobnicate")
    assert_one_line_error(code, err, "--frobnicate")


def test_missing_cuda_is_one_line_error(capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # also on a machine with a GPU
    code, _, err = run_cli(capsys, "classify", "sign:stop", "--device", "cuda")
    assert_one_line_error(code, err, "CUDA")


def test_models_lists_signs_with_its_weights(capsys):
    code, out, _ = run_cli(capsys, "models", "--json")
    assert code == 0
    entries = {e["spec"]: e for e in json.loads(out)}
    assert entries["signs"]["available"] is True
    assert entries["signs"]["weights"].endswith("signs.safetensors")


def test_unfixable_os_errors_stay_internal_errors():
    assert os_error_message(OSError(errno.EIO, "Input/output error", "/dev/sda")) is None


def test_a_full_disk_message_names_the_file_and_says_the_disk_is_full(tmp_path):
    message = os_error_message(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "s.pdf")))
    assert message == f"{tmp_path / 's.pdf'}: No space left on device (the disk is full)"
