"""The wheel a user installs carries everything the commands read at run time."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_weights_presets_and_print_templates(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("physical_adv", "print_templates"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(src)],
                   check=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("physical_adv-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {"physical_adv/models/weights/signs.safetensors", "physical_adv/models/weights/signs.json",
                "physical_adv/attack/presets/print-camera.toml"}
    expected |= {f"physical_adv/print_templates/{p.name}" for p in (ROOT / "print_templates").glob("*.toml")}
    assert expected <= names, sorted(expected - names)
    packages = {p.parent.relative_to(ROOT).as_posix() for p in (ROOT / "physical_adv").rglob("__init__.py")}
    assert {f"{pkg}/__init__.py" for pkg in packages} <= names, "a subpackage is missing from pyproject's package list"
