"""``physical-adv harden``: adversarial training, with the project's own attack loop.

A stored model (``signs``, ``signs-resnet``, a model directory) is fine-tuned on adversarial
examples made on the fly, mixed with clean ones. The methods (one or several, mixed in every
batch; the adversarial share of a batch is split evenly between them):

* ``pgd`` — Madry et al. 2018: L∞ PGD with a random start, ``steps`` steps of
  ``2.5·ε/steps``, on the training images.
* ``fast`` — Wong, Rice & Kolter 2020 ("Fast is better than free"): one FGSM step of
  ``α = 1.25·ε`` from a uniform random start, with a triangular (cyclic) learning rate. Its
  known failure, *catastrophic overfitting* (PGD accuracy collapses to ~0 within an epoch while
  FGSM accuracy rises), is watched by the held-out check after every epoch: when PGD accuracy
  falls more than ``overfit_drop`` below its best, training stops and the best epoch's weights
  are kept, and the record says so.
* ``eot`` — the perturbation lives on a printable *tile* (the sign on paper white, as ``sheet``
  prints it) and the loss is taken after the print-and-camera renderer of ``--eot``: each
  example gets its own draw of the distribution, and PGD in the tile's L∞ ball of ``ε`` runs
  through that render, so training sees perturbations as a photo of a print shows them.
* ``occlusion`` — Wu, Tong & Vorobeychik 2020 (DOA, "Defending against physically realizable
  attacks"): a rectangle of free content on the tile, placed where the loss is most sensitive
  (the gradient-magnitude search of the paper: the window with the largest sum of squared
  gradients), its content optimised by ``steps`` PGD steps, rendered through the same
  print-and-camera draws: the sticker threat model. Rectangle areas are drawn from
  ``sticker_area`` (fractions of the tile), aspect ratios from 1:2 to 2:1.

Data: ``signs``-family models (their class names are the signs classes) train on fresh scenes of
the project's generator (the ``train-signs`` scenes; tiles for ``eot``/``occlusion`` from the same
sign styles); any other model needs ``--data DIR``, one subfolder per class named as the
model's classes (its images serve as scenes and as tiles).

Random streams: epoch ``e`` draws its scenes from ``(HARDEN_STREAM, seed, e)`` and seeds its
attacks from the same triple, so a resumed run is the run that never stopped; the held-out
check draws from ``CHECK_STREAM`` (neither the training stream of ``signs`` nor the evaluation
stream of the README's accuracy figures).

Interruptions: after every epoch one checkpoint beside ``out`` (:func:`checkpoint_path`)
holds the weights, the optimiser and schedule, and the history; rerunning the same command
resumes there. The model directory (``model.safetensors``, ``model.json``, ``harden.json``) is
written aside and swapped in at the end, so no half-written model directory is ever left.
"""

from __future__ import annotations

import copy
import math
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from physical_adv.artifacts import atomic_write_bytes, atomic_write_json, replace_folder, software_versions, utc_now
from physical_adv.attack import eot
from physical_adv.attack.loop import optimize
from physical_adv.attack.objectives import cross_entropy_objective
from physical_adv.attack.threat import LinfBall, Patch
from physical_adv.classes import normalise
from physical_adv.errors import UserError
from physical_adv.images import IMAGE_SUFFIXES, load_image, to_batch
from physical_adv.models.base import Classifier
from physical_adv.models.stored import save_model
from physical_adv.signs.designs import CLASS_NAMES, PAPER_WHITE, SIGN_FILL
from physical_adv.signs.scenes import SignBank, render_scene
from physical_adv.ui import console, make_progress

METHODS = ("pgd", "fast", "eot", "occlusion")
TEXTURE_METHODS = ("eot", "occlusion")  # methods that perturb a printable tile, not the image
HARDEN_STREAM = 0x4A2D
CHECK_STREAM = 0xC4EC
RECORD_NAME = "harden.json"
MAX_EPS = 64.0  # /255: beyond this an L∞ "perturbation" repaints the sign
SCENE_SIZE = 64  # signs scenes are rendered at 64 px, as attacks and evaluation show them


@dataclass(frozen=True)
class HardenConfig:
    """Options of ``physical-adv harden``; validated on construction.

    Attributes:
        out: the model directory to write.
        model: a stored model spec (``signs``, ``signs-resnet``, a model directory or file).
        methods: one or more of :data:`METHODS`, mixed in every batch.
        eps: L∞ budget in /255 (``pgd``, ``fast``, ``eot``).
        steps: inner attack steps (``pgd``, ``eot``, ``occlusion``; ``fast`` takes one).
        epochs, samples: epochs and training examples per epoch.
        clean_fraction: the share of each batch that is clean scenes.
        sticker_area: ``(lo, hi)`` rectangle area as a fraction of the tile (``occlusion``).
        eps_warmup: epochs over which ε ramps linearly up from 0 (0 = none).
        fast_alpha: ``fast``'s FGSM step as a multiple of ε (Wong et al.: 1.25; larger ones
            overfit catastrophically).
        eot: the print-and-camera distribution of ``eot`` and ``occlusion``.
        texture_size: side of the training tiles in pixels.
        data: image folder with one subfolder per class (required for non-signs models).
        check_samples, check_steps: the held-out check after each epoch (its PGD's steps).
        overfit_check, overfit_drop: stop at catastrophic overfitting (PGD accuracy more than
            ``overfit_drop`` below its best).
        from_scratch: train the model's architecture from fresh random weights (seeded)
            instead of fine-tuning its weights (the papers' protocol).
    """

    out: Path
    model: str = "signs"
    methods: tuple[str, ...] = ("pgd",)
    eps: float = 8.0
    steps: int = 5
    epochs: int = 5
    samples: int = 20_000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    clean_fraction: float = 0.5
    sticker_area: tuple[float, float] = (0.05, 0.3)
    eps_warmup: float = 1.0
    fast_alpha: float = 1.25
    eot: str = "print-camera"
    texture_size: int = 128
    data: Path | None = None
    check_samples: int = 256
    check_steps: int = 10
    overfit_check: bool = True
    overfit_drop: float = 0.2
    from_scratch: bool = False
    seed: int = 0
    threads: int = 2
    classes: str | None = None  # class-name file, only so that a TorchScript model loads (to be refused)
    device: str = "cpu"

    def __post_init__(self) -> None:
        if not self.methods:
            raise ValueError("give at least one --method")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"a method is given twice: {', '.join(self.methods)}")
        if not 0 < self.eps <= MAX_EPS:
            raise ValueError(f"eps must be in (0, {MAX_EPS:g}] (/255 units), got {self.eps:g}")
        if not 1 <= self.steps <= 100:
            raise ValueError(f"steps must be in [1, 100], got {self.steps}")
        if self.epochs < 1 or self.samples < self.batch_size or self.batch_size < 4:
            raise ValueError("epochs must be ≥ 1, batch-size ≥ 4 and samples ≥ batch-size")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr:g}")
        if not 0 <= self.clean_fraction < 1:
            raise ValueError(f"clean fraction must be in [0, 1), got {self.clean_fraction:g}")
        lo, hi = self.sticker_area
        if not 0 < lo <= hi <= 0.6:
            raise ValueError(f"sticker areas must satisfy 0 < lo ≤ hi ≤ 0.6, got {lo:g}, {hi:g}")
        if not 0 < self.fast_alpha <= 10:
            raise ValueError(f"fast alpha must be in (0, 10] (a multiple of eps), got {self.fast_alpha:g}")
        if self.eps_warmup < 0:
            raise ValueError(f"eps warm-up must be ≥ 0 epochs, got {self.eps_warmup:g}")
        if not 32 <= self.texture_size <= 512:
            raise ValueError(f"texture size must be in [32, 512], got {self.texture_size}")
        if self.check_samples < 8 or self.check_steps < 1:
            raise ValueError("check samples must be ≥ 8 and check steps ≥ 1")
        if not 0 < self.overfit_drop < 1:
            raise ValueError(f"overfit drop must be in (0, 1), got {self.overfit_drop:g}")
        if self.threads < 1:
            raise ValueError(f"threads must be ≥ 1, got {self.threads}")

    @property
    def adversarial_per_batch(self) -> int:
        return self.batch_size - int(round(self.batch_size * self.clean_fraction))

    @property
    def steps_per_epoch(self) -> int:
        return self.samples // self.batch_size


# --------------------------------------------------------------------------- data


class SceneData:
    """Fresh scenes of the signs generator, and printable tiles of the same sign styles."""

    kind = "signs scenes"

    def __init__(self, rng: np.random.Generator, texture_size: int) -> None:
        self.rng, self.texture_size = rng, texture_size
        self.bank, self._drawn = SignBank(rng, styles_per_class=8), 0

    def _maybe_redraw(self, n: int) -> None:
        self._drawn += n
        if self._drawn > 4000:  # a fresh set of looks now and then, as train-signs does
            self.bank, self._drawn = SignBank(self.rng, styles_per_class=8), 0

    def scenes(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._maybe_redraw(n)
        labels = self.rng.integers(0, len(CLASS_NAMES), n)
        imgs = np.stack([render_scene(self.rng, self.bank, int(y), SCENE_SIZE) for y in labels])
        return to_batch(imgs), torch.from_numpy(labels)

    def tiles(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` tiles ``(n, 3, T, T)`` in [0, 1]: a sign of a random style on paper white, as printed."""
        self._maybe_redraw(n)
        labels = self.rng.integers(0, len(CLASS_NAMES), n)
        t = self.texture_size
        inner = int(round(t * SIGN_FILL))
        o = (t - inner) // 2
        out = np.empty((n, t, t, 3), np.float32)
        out[:] = PAPER_WHITE
        for i, y in enumerate(labels):
            rgb, alpha = self.bank.pick(self.rng, int(y))
            rgb = cv2.resize(rgb, (inner, inner), interpolation=cv2.INTER_AREA)
            alpha = cv2.resize(alpha, (inner, inner), interpolation=cv2.INTER_AREA)[..., None]
            region = out[i, o : o + inner, o : o + inner]
            region += (rgb - region) * alpha
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


class FolderData:
    """An image folder with one subfolder per class; images serve as scenes and as tiles."""

    kind = "image folder"

    def __init__(self, folder: Path, class_names: list[str], rng: np.random.Generator, input_size: int,
                 texture_size: int) -> None:
        self.rng = rng
        self.images, self.tile_images, self.labels = load_folder(folder, class_names, input_size, texture_size)

    def _pick(self, n: int, pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.rng.integers(0, len(self.labels), n))
        flip = torch.from_numpy(self.rng.random(n) < 0.5).view(n, 1, 1, 1)
        x = pool[idx]
        return torch.where(flip, x.flip(-1), x), self.labels[idx]

    def scenes(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._pick(n, self.images)

    def tiles(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._pick(n, self.tile_images)


def load_folder(folder: Path, class_names: list[str], input_size: int,
                texture_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read ``folder/CLASS/*.png…`` → (images at ``input_size``, at ``texture_size``, labels).

    Raises:
        UserError: not a folder, no class subfolders, a subfolder that names no class of the
            model, or no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--data {folder} is not a folder")
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise UserError(f"--data {folder} has no class subfolders (expected {folder}/CLASS/IMAGE.png, one subfolder "
                        "per class named as the model's classes)")
    lookup = {normalise(n): i for i, n in enumerate(class_names)}
    small, large, labels = [], [], []
    for sub in subdirs:
        if normalise(sub.name) not in lookup:
            raise UserError(f"--data subfolder {sub.name!r} names no class of the model "
                            f"(its classes: {', '.join(class_names[:8])}{' …' if len(class_names) > 8 else ''})")
        for path in sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            img = load_image(path)
            small.append(cv2.resize(img, (input_size, input_size), interpolation=cv2.INTER_AREA))
            large.append(cv2.resize(img, (texture_size, texture_size), interpolation=cv2.INTER_AREA))
            labels.append(lookup[normalise(sub.name)])
    if not labels:
        raise UserError(f"--data {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) in its class subfolders")
    return to_batch(np.stack(small)), to_batch(np.stack(large)), torch.tensor(labels)


# --------------------------------------------------------------------------- the attacks training sees


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return cross_entropy_objective(logits, y, targeted=False)


def pgd_examples(model, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, gen: torch.Generator,
                 alpha: float | None = None) -> torch.Tensor:
    """Madry et al.'s PGD with a random start in the L∞ ball of ``eps`` (in [0, 1] units)."""
    alpha = 2.5 * eps / steps if alpha is None else alpha
    return optimize(model, x, y, threat=LinfBall(eps), objective=_ce, steps=steps, alpha=alpha, targeted=False,
                    random_start=True, generator=gen).x


def fast_examples(model, x: torch.Tensor, y: torch.Tensor, eps: float, gen: torch.Generator,
                  alpha_factor: float = 1.25) -> torch.Tensor:
    """Wong et al. 2020's FGSM with a uniform random start and ``α = alpha_factor·ε``."""
    return pgd_examples(model, x, y, eps, 1, gen, alpha=alpha_factor * eps)


def eot_examples(model, tiles: torch.Tensor, y: torch.Tensor, eps: float, steps: int, dist: eot.EOTDistribution,
                 gen: torch.Generator) -> torch.Tensor:
    """PGD in the tiles' L∞ ball through one print-and-camera draw per tile; returns the rendered views."""
    params = eot.sample(dist, len(tiles), tiles.shape[-1], model.input_size, gen, tiles.device)
    render = lambda t: eot.render(t, params)  # noqa: E731
    adv = optimize(model, tiles, y, threat=LinfBall(eps), objective=_ce, steps=steps, alpha=2.5 * eps / steps,
                   targeted=False, render_views=render, random_start=True, generator=gen).x
    with torch.no_grad():
        return render(adv)


def sensitive_windows(model, tiles: torch.Tensor, y: torch.Tensor, params: eot.EOTParams, h: int, w: int) -> torch.Tensor:
    """DOA's placement: the top-left corner ``(N, 2)`` (row, col) of the ``h × w`` window of each
    tile with the largest sum of squared loss gradients (through the print-and-camera render)."""
    x = tiles.detach().requires_grad_(True)
    loss = F.cross_entropy(model(eot.render(x, params)), y, reduction="sum")
    grad = torch.autograd.grad(loss, x)[0]
    energy = grad.pow(2).sum(1, keepdim=True)
    stride = max(1, min(h, w) // 4)
    sums = F.avg_pool2d(energy, (h, w), stride=stride)  # (N, 1, rows, cols)
    flat = sums.flatten(1).argmax(1)
    cols = sums.shape[-1]
    return torch.stack([(flat // cols) * stride, (flat % cols) * stride], 1)


def occlusion_examples(model, tiles: torch.Tensor, y: torch.Tensor, steps: int, area: float,
                       dist: eot.EOTDistribution, gen: torch.Generator) -> torch.Tensor:
    """DOA rectangles of ``area`` (fraction of the tile) of free content, placed by
    :func:`sensitive_windows`, content by ``steps`` PGD steps; returns the rendered views."""
    n, t = len(tiles), tiles.shape[-1]
    aspect = math.exp(float(torch.empty(1).uniform_(math.log(0.5), math.log(2.0), generator=gen)))
    h = max(2, min(t, int(round(t * math.sqrt(area * aspect)))))
    w = max(2, min(t, int(round(t * area * t / h))))
    params = eot.sample(dist, n, t, model.input_size, gen, tiles.device)
    corners = sensitive_windows(model, tiles, y, params, h, w)
    rows = torch.arange(t, device=tiles.device).view(1, t, 1)
    cols = torch.arange(t, device=tiles.device).view(1, 1, t)
    r0, c0 = corners[:, 0].view(n, 1, 1), corners[:, 1].view(n, 1, 1)
    mask = ((rows >= r0) & (rows < r0 + h) & (cols >= c0) & (cols < c0 + w)).unsqueeze(1).to(tiles.dtype)
    render = lambda x: eot.render(x, params)  # noqa: E731
    hi, lo = 0.3, 0.03  # large steps: free content must move across [0, 1] in a few steps
    alpha = lambda s: lo + 0.5 * (hi - lo) * (1 + math.cos(math.pi * s / max(1, steps - 1)))  # noqa: E731
    adv = optimize(model, tiles, y, threat=Patch(mask), objective=_ce, steps=steps, alpha=alpha, targeted=False,
                   render_views=render, random_start=True, generator=gen).x
    with torch.no_grad():
        return render(adv)


# --------------------------------------------------------------------------- the held-out check


@dataclass
class CheckSet:
    """A fixed held-out batch: scenes (for clean, FGSM and PGD accuracy) and tiles (eot, occlusion)."""

    scenes: torch.Tensor
    scene_labels: torch.Tensor
    tiles: torch.Tensor
    tile_labels: torch.Tensor


def make_check_set(cfg: HardenConfig, data_factory) -> CheckSet:
    data = data_factory(np.random.default_rng([CHECK_STREAM, cfg.seed]))
    x, y = data.scenes(cfg.check_samples)
    t, ty = data.tiles(cfg.check_samples // 2) if any(m in TEXTURE_METHODS for m in cfg.methods) else (x[:0], y[:0])
    return CheckSet(x, y, t, ty)


def _accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def run_check(model, cfg: HardenConfig, check: CheckSet, dist: eot.EOTDistribution) -> dict:
    """Held-out accuracies: clean, FGSM-RS and PGD-``check_steps`` at ``eps`` on the scenes;
    EOT-PGD and occlusion on the tiles when those methods train. Attack seeds are fixed, so
    every epoch is checked against the same draws."""
    model.eval()
    eps = cfg.eps / 255
    gen = lambda k: torch.Generator(device=check.scenes.device).manual_seed(CHECK_STREAM + k)  # noqa: E731
    out = {"n": len(check.scene_labels), "clean": _accuracy(model, check.scenes, check.scene_labels)}
    out["fgsm"] = _accuracy(model, fast_examples(model, check.scenes, check.scene_labels, eps, gen(1)), check.scene_labels)
    out["pgd"] = _accuracy(model, pgd_examples(model, check.scenes, check.scene_labels, eps, cfg.check_steps, gen(2)),
                           check.scene_labels)
    if "eot" in cfg.methods:
        views = eot_examples(model, check.tiles, check.tile_labels, eps, cfg.check_steps, dist, gen(3))
        out["eot"] = _accuracy(model, views, check.tile_labels)
    if "occlusion" in cfg.methods:
        area = float(np.mean(cfg.sticker_area))
        views = occlusion_examples(model, check.tiles, check.tile_labels, cfg.check_steps, area, dist, gen(4))
        out["occlusion"] = _accuracy(model, views, check.tile_labels)
    return out


# --------------------------------------------------------------------------- checkpoints and output


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file or a non-empty folder (nothing is changed)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty; choose another --out (nothing was changed)")


def checkpoint_path(out: Path) -> Path:
    """Where a run writing ``out`` keeps its per-epoch checkpoint (a hidden sibling file)."""
    out = Path(out)
    return out.parent / f".{out.name}.harden-checkpoint.pt"


def _resume_key(cfg: HardenConfig) -> dict:
    return {k: (str(v) if isinstance(v, Path) else (list(v) if isinstance(v, tuple) else v))
            for k, v in asdict(cfg).items() if k not in ("device", "threads", "classes")}


def _save_checkpoint(cfg: HardenConfig, state: dict) -> None:
    import io

    buf = io.BytesIO()
    torch.save({**state, "config": _resume_key(cfg)}, buf)
    atomic_write_bytes(checkpoint_path(cfg.out), buf.getvalue())


def _load_checkpoint(cfg: HardenConfig) -> dict | None:
    path = checkpoint_path(cfg.out)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable checkpoint is ignored, never trusted
        console.print(f"[yellow]ignoring an unreadable checkpoint {path}; starting afresh[/yellow]")
        return None
    if state.get("config") != _resume_key(cfg):
        console.print(f"[yellow]{path} is a checkpoint of a run with other options; starting afresh[/yellow]")
        return None
    return state


def trainable(model) -> tuple[str, dict]:
    """The architecture of a stored model; a :class:`UserError` for anything harden cannot train."""
    arch = model.card.extra.get("arch") if isinstance(model, Classifier) else None
    if arch is None or isinstance(model.net, torch.jit.ScriptModule):
        raise UserError(f"model {model.spec} cannot be trained by harden: it is not a stored model whose architecture "
                        "is known (a TorchScript file is frozen; torchvision, module:factory and ensembles are not "
                        "stored models); give signs, signs-resnet or a model directory")
    return arch, dict(model.card.extra.get("arch_kwargs", {}))


def _write_model_dir(cfg: HardenConfig, model: Classifier, arch: str, arch_kwargs: dict, record: dict) -> None:
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.harden-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        net = model.net
        save_model(net, tmp, record, arch=arch, arch_kwargs=arch_kwargs, input_size=model.input_size,
                   class_names=model.class_names, mean=model.mean.flatten().tolist(), std=model.std.flatten().tolist())
        atomic_write_json(tmp / RECORD_NAME, record)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- training


def one_cycle(opt, lr: float, total: int, warm_fraction: float, linear: bool):
    """torch's one-cycle schedule (up from lr/25 over ``warm_fraction`` of ``total`` steps, then
    down — triangular, Wong et al.'s cyclic schedule for ``fast``, or cosine). OneCycleLR divides
    by zero when the rise ends exactly at step 0 (``warm_fraction · total = 1``, e.g. a two-step
    run); then the rise ends half a step later."""
    if abs(warm_fraction * total - 1) < 1e-9:
        warm_fraction = 1.5 / total
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=warm_fraction,
                                               anneal_strategy="linear" if linear else "cos")


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def adversarial_batch(model, cfg: HardenConfig, data, eps: float, dist: eot.EOTDistribution, gen: torch.Generator,
                      rng: np.random.Generator) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The adversarial part of one batch: ``adversarial_per_batch`` examples split between the methods."""
    xs, ys = [], []
    for method, n in zip(cfg.methods, _split(cfg.adversarial_per_batch, len(cfg.methods))):
        if n == 0:
            continue
        if method in TEXTURE_METHODS:
            tiles, y = data.tiles(n)
            if method == "eot":
                x = eot_examples(model, tiles, y, eps, cfg.steps, dist, gen)
            else:
                area = float(rng.uniform(*cfg.sticker_area))
                x = occlusion_examples(model, tiles, y, cfg.steps, area, dist, gen)
        else:
            x, y = data.scenes(n)
            x = fast_examples(model, x, y, eps, gen, cfg.fast_alpha) if method == "fast" else pgd_examples(model, x, y, eps, cfg.steps, gen)
        xs.append(x.detach())
        ys.append(y)
    return xs, ys


def harden(cfg: HardenConfig, show_progress: bool = True) -> dict:
    """Adversarially fine-tune ``cfg.model``; writes the model directory ``cfg.out`` and returns the record."""
    from physical_adv.models import load_model

    out = Path(cfg.out)
    check_out(out)
    torch.set_num_threads(cfg.threads)
    dist = eot.load_distribution(cfg.eot)
    model = load_model(cfg.model, cfg.device, classes=cfg.classes)
    arch, arch_kwargs = trainable(model)
    if cfg.from_scratch:
        from physical_adv.models.archs import build_arch

        torch.manual_seed(cfg.seed)
        model.net = build_arch(arch, len(model.class_names), **arch_kwargs).to(model.device)
    names = list(model.class_names)
    signs_family = [normalise(n) for n in names] == [normalise(n) for n in CLASS_NAMES]
    if cfg.data is None and not signs_family:
        raise UserError(f"model {cfg.model} is not a signs-family model: give --data DIR (one subfolder per class)")
    if cfg.data is not None:
        load_folder(cfg.data, names, model.input_size, cfg.texture_size)  # validate before anything runs
        data_factory = lambda rng: FolderData(cfg.data, names, rng, model.input_size, cfg.texture_size)  # noqa: E731
    else:
        data_factory = lambda rng: SceneData(rng, cfg.texture_size)  # noqa: E731
    base = {"spec": model.spec, "weights": model.card.weights, **{k: v for k, v in model.card.extra.items()}}
    device = model.device
    model = model.to(memory_format=torch.channels_last)
    model.net.requires_grad_(True)  # loaded for attacks, with frozen parameters
    steps_per_epoch, total_steps = cfg.steps_per_epoch, cfg.epochs * cfg.steps_per_epoch
    opt = torch.optim.AdamW(model.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    fast_only = cfg.methods == ("fast",)
    sched = one_cycle(opt, cfg.lr, total_steps, 0.5 if fast_only else 0.2, linear=fast_only)
    check = make_check_set(cfg, data_factory)
    history: list[dict] = []
    first_epoch, best, overfit, seconds = 0, None, None, 0.0
    start_check = run_check(model, cfg, check, dist)
    resume = _load_checkpoint(cfg)
    if resume is not None:
        model.net.load_state_dict(resume["net"])
        opt.load_state_dict(resume["opt"])
        sched.load_state_dict(resume["sched"])
        history, first_epoch, seconds = resume["history"], resume["epoch"], resume["seconds"]
        best = resume["best"]
        console.print(f"resuming from {checkpoint_path(out)} after epoch {first_epoch}/{cfg.epochs}")
    console.print(f"before hardening (held-out, n={start_check['n']}): " + _check_text(start_check))
    with make_progress(disable=not show_progress) as progress:
        task = progress.add_task("harden", total=total_steps, info="", completed=first_epoch * steps_per_epoch)
        for epoch in range(first_epoch, cfg.epochs):
            t0 = time.time()
            rng = np.random.default_rng([HARDEN_STREAM, cfg.seed, epoch])
            torch.manual_seed(int(rng.integers(2**62)))
            gen = torch.Generator(device=device).manual_seed(int(rng.integers(2**62)))
            data = data_factory(rng)
            stats = _train_epoch(model, cfg, data, epoch, opt, sched, dist, gen, rng, progress, task)
            model.eval()
            result = run_check(model, cfg, check, dist)
            seconds += time.time() - t0
            entry = {"epoch": epoch + 1, "train": stats, "check": result, "lr_end": sched.get_last_lr()[0],
                     "seconds": round(time.time() - t0, 1)}
            history.append(entry)
            console.print(f"epoch {epoch + 1}/{cfg.epochs}: train {stats['clean_acc']:.3f} clean / {stats['adv_acc']:.3f} "
                          f"adversarial · held-out {_check_text(result)} · {entry['seconds']:.0f} s")
            if best is None or result["pgd"] >= best["pgd"]:
                best = {"epoch": epoch + 1, "pgd": result["pgd"], "net": copy.deepcopy(model.net.state_dict())}
            if cfg.overfit_check and "fast" in cfg.methods and best["pgd"] - result["pgd"] > cfg.overfit_drop:
                overfit = {"epoch": epoch + 1, "pgd": result["pgd"], "fgsm": result["fgsm"], "best_pgd": best["pgd"],
                           "best_epoch": best["epoch"]}
                console.print(f"[yellow]catastrophic overfitting at epoch {epoch + 1}: held-out PGD accuracy fell from "
                              f"{best['pgd']:.3f} (epoch {best['epoch']}) to {result['pgd']:.3f} while FGSM accuracy is "
                              f"{result['fgsm']:.3f}; stopping and keeping epoch {best['epoch']}'s weights[/yellow]")
                model.net.load_state_dict(best["net"])
                break
            _save_checkpoint(cfg, {"net": model.net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                                   "history": history, "epoch": epoch + 1, "seconds": seconds, "best": best})
    model.eval()
    final = run_check(model, cfg, check, dist) if overfit is not None else history[-1]["check"] if history else start_check
    record = _record(cfg, model, base, start_check, final, history, overfit, seconds, signs_family)
    _write_model_dir(cfg, model.to(memory_format=torch.contiguous_format), arch, arch_kwargs, record)
    checkpoint_path(out).unlink(missing_ok=True)
    return record


def _check_text(c: dict) -> str:
    parts = [f"clean {c['clean']:.3f}", f"FGSM {c['fgsm']:.3f}", f"PGD {c['pgd']:.3f}"]
    parts += [f"{k} {c[k]:.3f}" for k in ("eot", "occlusion") if k in c]
    return " · ".join(parts)


def _train_epoch(model, cfg: HardenConfig, data, epoch: int, opt, sched, dist, gen, rng, progress, task) -> dict:
    n_clean = cfg.batch_size - cfg.adversarial_per_batch
    warm = cfg.eps_warmup * cfg.steps_per_epoch
    sums = {"loss": 0.0, "clean": 0, "adv": 0, "n_clean": 0, "n_adv": 0}
    for step in range(cfg.steps_per_epoch):
        global_step = epoch * cfg.steps_per_epoch + step
        eps = cfg.eps / 255 * (min(1.0, (global_step + 1) / warm) if warm else 1.0)
        model.eval()  # attacks see the model as it is used (batch-norm statistics frozen)
        xs, ys = adversarial_batch(model, cfg, data, eps, dist, gen, rng)
        if n_clean:
            x, y = data.scenes(n_clean)
            xs.insert(0, x)
            ys.insert(0, y)
        x = torch.cat([F.interpolate(v, size=(model.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
                       if v.shape[-1] != model.input_size else v for v in xs]).contiguous(memory_format=torch.channels_last)
        y = torch.cat(ys).to(x.device)
        model.train()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            hit = logits.argmax(1) == y
        sums["loss"] += loss.item()
        sums["clean"] += int(hit[:n_clean].sum())
        sums["adv"] += int(hit[n_clean:].sum())
        sums["n_clean"] += n_clean
        sums["n_adv"] += len(y) - n_clean
        progress.update(task, advance=1, info=f"epoch {epoch + 1} loss {sums['loss'] / (step + 1):.3f} "
                                              f"adv acc {sums['adv'] / max(1, sums['n_adv']):.3f} ε {eps * 255:.1f}/255")
    model.eval()
    return {"loss": round(sums["loss"] / cfg.steps_per_epoch, 4),
            "clean_acc": sums["clean"] / max(1, sums["n_clean"]), "adv_acc": sums["adv"] / max(1, sums["n_adv"])}


def _record(cfg, model, base, start_check, final, history, overfit, seconds, signs_family) -> dict:
    from physical_adv.signs.train import evaluate as evaluate_scenes

    metrics = {"check_before": start_check, "check_after": final}
    if signs_family:
        metrics["heldout"] = evaluate_scenes(model, 2000)
        metrics["heldout_print"] = evaluate_scenes(model, 1000, kind="print")
    return {
        "schema": 1,
        "model": "hardened",
        "created": utc_now(),
        "base_model": base,
        "config": _resume_key(cfg),
        "class_names": list(model.class_names),
        "data": str(cfg.data) if cfg.data is not None else "signs scenes (fresh from the generator)",
        "train_seconds": round(seconds, 1),
        "epochs_run": len(history),
        "history": history,
        "catastrophic_overfitting": overfit,
        "metrics": metrics,
        "versions": software_versions(),
    }
