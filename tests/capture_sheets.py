"""Sheets for the simulate and capture tests, laid out from hand-written run directories.

These tests are about finding, rectifying and reading printed tiles, not about the attack,
so a run directory here is what ``attack`` would leave (``attack.json``, ``clean.png``,
``adversarial.png``) with a seeded ±8/255 noise as its "perturbation": no optimisation, and
no dependence on the attack code. A second model, ``capture_swapped:make``, is the
embedded ``signs`` network with two pairs of its outputs swapped (stop ↔ yield, speed limit
30 ↔ 50): a real classifier that disagrees with ``signs`` in a known way.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from physical_adv.images import save_png
from physical_adv.sheet import SheetConfig, make_sheet
from physical_adv.signs.designs import CLASS_NAMES, render_clean

SWAPPED = "capture_swapped:make"
SWAPPED_MODULE = '''
import torch

from physical_adv.models import load_model

SWAPS = {"stop": "yield", "yield": "stop", "speed limit 30": "speed limit 50", "speed limit 50": "speed limit 30"}


class Swapped(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.signs = load_model("signs", "cpu")
        names = self.signs.class_names
        self.register_buffer("perm", torch.tensor([names.index(SWAPS.get(n, n)) for n in names]))

    def forward(self, x):
        return self.signs(x)[:, self.perm]


def make():
    return Swapped()
'''

_CACHE: dict[str, object] = {}


def install_swapped_model(folder: Path) -> str:
    """Write the ``capture_swapped`` module into ``folder``, put it on ``sys.path``; returns its spec."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "capture_swapped.py").write_text(SWAPPED_MODULE)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return SWAPPED


def write_run(out: Path, sign: str, model: str = "signs", seed: int = 0, size: int = 256) -> Path:
    """A run directory for ``sign`` against ``model`` (64 px input, the signs classes)."""
    out.mkdir(parents=True, exist_ok=True)
    clean = render_clean(sign, size)
    noise = np.random.default_rng(seed).integers(-8, 9, clean.shape)
    adversarial = np.clip(clean.astype(int) + noise, 0, 255).astype(np.uint8)
    save_png(out / "clean.png", clean)
    save_png(out / "adversarial.png", adversarial)
    record = {"schema": 1, "model": {"spec": model, "input_size": 64}, "true_class": sign, "target_class": None,
              "class_names": list(CLASS_NAMES), "threat": "linf", "config": {"eot": "print-camera"}}
    (out / "attack.json").write_text(json.dumps(record))
    return out


def make_test_sheet(root: Path, runs: tuple[tuple[str, str], ...] = (("stop", "signs"), ("speed limit 50", "signs")),
                    template: str = "a4"):
    """A one-page sheet of each run's adversarial tile and clean control (tiles 01 … in run order)."""
    dirs = [str(write_run(root / f"run{i}", sign, model, seed=i)) for i, (sign, model) in enumerate(runs)]
    return make_sheet(SheetConfig(runs=tuple(dirs), out=root / "sheet.pdf", template=template, previews=False))


def shared_sheet(tmp_path_factory):
    """The default two-run sheet, made once per test session."""
    if "sheet" not in _CACHE:
        _CACHE["sheet"] = make_test_sheet(tmp_path_factory.mktemp("sheet"))
    return _CACHE["sheet"]
