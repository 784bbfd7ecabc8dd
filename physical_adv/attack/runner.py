"""``physical-adv attack``: an EOT attack on one source image, written to a run directory.

The run directory (written to a temporary sibling and renamed at the end, so a failed or
interrupted run leaves nothing half-written) holds:

* ``adversarial.png`` — the texture at print resolution, lossless;
* ``clean.png`` — the source at the same resolution;
* ``perturbation.png`` — the change, amplified for viewing;
* ``attack.json`` — schema, config, model, classes, final metrics, versions;
* ``progress.csv`` — one row per optimisation step;
* ``eot_preview.png`` — held-out transformed samples with the model's prediction on each;
* ``queries.csv`` — black-box runs only: per step the queries spent so far, objective, batch success.

``--transfer-to`` adds ``transfer`` to ``attack.json``: the same held-out draws classified by
other models (:mod:`physical_adv.attack.transfer`, which also holds the transfer techniques
``--momentum``, ``--ti-sigma`` and ``--di``). ``--model a,b,c`` optimises an ensemble (Liu et al.
2017: the mean of the members' logits, one batched pass per member per step).

A black-box run (``oracle``) optimises by queries only (:func:`run_blackbox`, then
:func:`physical_adv.attack.blackbox_run.query_attack`: NES through the shared loop, the Square
random search, partial information or label-only) and still checks its result on the local model
``model`` over held-out print-camera draws; ``attack.json`` gains ``blackbox``.

:func:`run_attack` reads as its stages: :func:`resolve_distributions` (what to optimise
over and check on), :func:`resolve_goal` (true and target class, by the one class-name
lookup), :func:`build_threat`, :func:`optimise`, :func:`evaluate`, then the record.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from physical_adv.artifacts import atomic_write_bytes, atomic_write_json, software_versions, utc_now
from physical_adv.attack import eot, schedules
from physical_adv.attack.loop import LoopResult, StepReport, optimize
from physical_adv.attack.objectives import OBJECTIVES, default_palette, non_printability, total_variation
from physical_adv.attack.threat import L2Ball, LinfBall, Patch, ThreatModel
from physical_adv.attack.transfer import InputDiversity, Momentum, TranslationInvariance, evaluate_transfer
from physical_adv.attack.transfer import open_transfer_targets
from physical_adv.blackbox.target import is_url
from physical_adv.classes import class_index
from physical_adv.errors import UserError
from physical_adv.images import load_image, save_png
from physical_adv.models import DEFAULT_MODEL, load_model
from physical_adv.outcome import attack_succeeded
from physical_adv.signs.designs import CLASS_NAMES as SIGN_CLASSES
from physical_adv.signs.designs import class_index as sign_class_index
from physical_adv.stats import wilson_interval
from physical_adv.ui import console, make_progress

SCHEMA = 1
PATCH_SHAPES = ("square", "circle", "band")
DEFAULT_EPS = {"linf": 16.0, "l2": 2.0}


@dataclass(frozen=True)
class AttackConfig:
    """Everything an attack run depends on; validated on construction.

    ``eps`` is in /255 units for ``linf`` and in [0, 1] L2-norm units measured at the
    model's input size for ``l2`` (``None`` = 16 or 2.0). ``patch``/``mask`` switch to
    patch mode, where ``eps`` does not apply.
    """

    source: str
    out: Path
    target: str | None = None
    true_class: str | None = None  # default: the sign's class for sign:NAME, else the clean prediction
    model: str = DEFAULT_MODEL
    classes: str | None = None  # class-name file for TorchScript and module:factory models
    eps: float | None = None
    norm: str = "linf"
    mask: str | None = None
    patch: str | None = None
    patch_area: float = 0.2
    patch_position: tuple[float, float] = (0.5, 0.5)
    eot: str = "print-camera"
    eval_eot: str | None = None  # held-out check (default: the same as eot; print-camera when eot is deterministic)
    samples: int = 32
    steps: int = 300
    seed: int = 0
    loss: str = "ce"
    tv_weight: float = 0.0
    nps_weight: float = 0.0
    palette: str | None = None  # a calibrate TOML: NPS against the printer's measured colours
    texture_size: int = 512
    eval_samples: int = 1000
    device: str = "auto"
    early_stop: bool = True
    oracle: str | None = None  # black-box: a model spec or label-detection URL that is only queried
    method: str = "nes"  # black-box method (with oracle)
    budget: int | None = None  # black-box: most images sent to the oracle (required with oracle)
    top_k: int = 5
    mode: str = "scores"
    start: str | None = None  # partial / label-only: an image of the target class (default sign:TARGET)
    nes_schedule: str = "cosine"  # NES step sizes: cosine or plateau (Ilyas et al.)
    transfer_to: tuple[str, ...] = ()  # model specs / URLs the finished run is checked on
    momentum: float = 0.0  # MI-FGSM decay μ (Dong et al. 2018); 0 = off
    ti_sigma: float = 0.0  # TI Gaussian sigma in model-input pixels (Dong et al. 2019); 0 = off
    di_prob: float = 0.0  # input diversity probability per view (Xie et al. 2019); 0 = off

    def __post_init__(self) -> None:
        if self.norm not in DEFAULT_EPS:
            raise ValueError(f"norm must be linf or l2, got {self.norm!r}")
        if self.eps is not None and not 0 < self.eps <= (255 if self.norm == "linf" else 1000):
            bound = "(0, 255]" if self.norm == "linf" else "(0, 1000]"
            raise ValueError(f"eps must be in {bound}, got {self.eps:g}")
        if self.mask and self.patch:
            raise ValueError("give either --mask or --patch, not both")
        if self.patch is not None and self.patch not in PATCH_SHAPES:
            raise ValueError(f"patch must be one of {', '.join(PATCH_SHAPES)}, got {self.patch!r}")
        if not 0 < self.patch_area <= 1:
            raise ValueError(f"patch-area must be in (0, 1], got {self.patch_area:g}")
        if not all(0 <= v <= 1 for v in self.patch_position):
            raise ValueError(f"patch position must be two fractions in [0, 1], got {list(self.patch_position)}")
        if self.samples < 1:
            raise ValueError(f"samples must be ≥ 1, got {self.samples}")
        if self.steps < 1:
            raise ValueError(f"steps must be ≥ 1, got {self.steps}")
        if self.loss not in OBJECTIVES:
            raise ValueError(f"loss must be one of {', '.join(OBJECTIVES)}, got {self.loss!r}")
        if self.tv_weight < 0 or self.nps_weight < 0:
            raise ValueError("regulariser weights must be ≥ 0")
        if self.palette is not None and not self.nps_weight:
            raise ValueError("--palette is the non-printability term's palette: give its weight with --nps W")
        if not 64 <= self.texture_size <= 4096:
            raise ValueError(f"texture size must be in [64, 4096], got {self.texture_size}")
        if self.eval_samples < 1:
            raise ValueError(f"eval samples must be ≥ 1, got {self.eval_samples}")
        self._check_transfer()
        if self.oracle is not None:
            self._check_blackbox()
        elif self.budget is not None:
            raise ValueError("--budget applies to black-box attacks: give --oracle SPEC|URL too")

    def _check_transfer(self) -> None:
        if any(not isinstance(s, str) or not s.strip() for s in self.transfer_to):
            raise ValueError("--transfer-to needs a model spec or URL, got an empty one")
        if not 0 <= self.momentum <= 10:
            raise ValueError(f"momentum must be in [0, 10], got {self.momentum:g}")
        if not 0 <= self.ti_sigma <= 16:
            raise ValueError(f"ti-sigma must be in [0, 16] model-input pixels, got {self.ti_sigma:g}")
        if not 0 <= self.di_prob <= 1:
            raise ValueError(f"di must be a probability in [0, 1], got {self.di_prob:g}")
        if self.oracle is not None and (self.momentum or self.ti_sigma or self.di_prob):
            raise ValueError("--momentum, --ti-sigma and --di apply to white-box attacks, not with --oracle")

    def _check_blackbox(self) -> None:
        from physical_adv.attack.blackbox_run import NES_SCHEDULES, check_method, queries_per_estimate

        check_method(self.method, self.mode, targeted=self.target is not None, patch_mode=self.patch_mode,
                     norm=self.norm)
        if self.budget is None or isinstance(self.budget, bool) or self.budget < 1:
            raise ValueError(f"budget must be a positive number of queries, got {self.budget}")
        if self.top_k < 1:
            raise ValueError(f"top-k must be ≥ 1, got {self.top_k}")
        need = queries_per_estimate(self.method, 1)
        if self.budget < need:
            raise ValueError(f"a budget of {self.budget} queries is too small for one {self.method} step "
                             f"(at least {need} queries)")
        if self.nes_schedule not in NES_SCHEDULES:
            raise ValueError(f"NES schedule must be one of {', '.join(NES_SCHEDULES)}, got {self.nes_schedule!r}")
        if self.start is not None and self.method not in ("partial", "label-only"):
            raise ValueError("--start applies to --method partial and label-only")

    @property
    def patch_mode(self) -> bool:
        return bool(self.mask or self.patch)

    @property
    def eps_value(self) -> float:
        return DEFAULT_EPS[self.norm] if self.eps is None else float(self.eps)


@dataclass
class AttackResult:
    out: Path
    record: dict


def _seeds(seed: int) -> tuple[int, int]:
    """Independent seeds for optimisation and held-out evaluation, both derived from ``seed``."""
    opt, held = np.random.SeedSequence([seed, 0x0A7]).generate_state(2)
    return int(opt), int(held)


def _square_texture(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    img = img[y0 : y0 + side, x0 : x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp) if side != size else img


def _texture_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    """``(S, S, 3)`` uint8 RGB → ``(1, 3, S, S)`` float in [0, 1] on ``device``."""
    return torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).float().div(255).to(device)


def build_mask(cfg: AttackConfig, size: int) -> np.ndarray | None:
    """The patch mask ``(size, size)`` float32 of 0/1, or ``None`` outside patch mode."""
    if cfg.mask:
        path = Path(cfg.mask)
        if not path.is_file():
            raise UserError(f"mask file not found: {path}")
        m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if m is None:
            raise UserError(f"cannot read mask {path} as an image")
        if m.shape[0] != m.shape[1]:
            raise UserError(f"mask {path} must be square like the tile, got {m.shape[1]}x{m.shape[0]}")
        mask = (cv2.resize(m, (size, size), interpolation=cv2.INTER_AREA) >= 128).astype(np.float32)
        if mask.sum() == 0:
            raise UserError(f"mask {path} has no white (perturbable) pixels")
        return mask
    if not cfg.patch:
        return None
    mask = np.zeros((size, size), np.float32)
    cx, cy = cfg.patch_position[0] * size, cfg.patch_position[1] * size
    area = cfg.patch_area * size * size
    if cfg.patch == "square":
        half = math.sqrt(area) / 2
        x0, x1 = int(round(max(0, cx - half))), int(round(min(size, cx + half)))
        y0, y1 = int(round(max(0, cy - half))), int(round(min(size, cy + half)))
        mask[y0:y1, x0:x1] = 1
    elif cfg.patch == "circle":
        yy, xx = np.mgrid[0:size, 0:size] + 0.5
        mask[(xx - cx) ** 2 + (yy - cy) ** 2 <= area / math.pi] = 1
    else:  # a horizontal band across the tile
        half = cfg.patch_area * size / 2
        mask[int(round(max(0, cy - half))) : int(round(min(size, cy + half))), :] = 1
    return mask


def evaluate_texture(model, texture: torch.Tensor, dist: eot.EOTDistribution, n: int, generator: torch.Generator,
                     batch: int = 100) -> tuple[torch.Tensor, torch.Tensor, eot.EOTParams]:
    """Probabilities ``(n, C)`` of ``model`` on ``n`` draws of ``dist`` applied to ``texture``,
    plus the first batch's images and params (for the preview)."""
    probs, first = [], None
    with torch.no_grad():
        for start in range(0, n, batch):
            params = eot.sample(dist, min(batch, n - start), texture.shape[-1], model.input_size, generator, texture.device,
                                fresh_noise=True)
            images = eot.render(texture, params)
            probs.append(torch.softmax(model(images), 1).cpu())
            if first is None:
                first = (images.cpu(), params)
    return torch.cat(probs), first[0], first[1]


@dataclass(frozen=True)
class Goal:
    """What the attack is after: the source's true class, the target (``None`` = untargeted),
    and where the true class came from (``--true-class``, the sign, or the clean prediction)."""

    true_idx: int
    target_idx: int | None
    true_class_from: str

    @property
    def targeted(self) -> bool:
        return self.target_idx is not None


@dataclass(frozen=True)
class Distributions:
    """The distribution optimised over, the one checked on, and why the check uses that one."""

    optimise: eot.EOTDistribution
    evaluate: eot.EOTDistribution
    evaluate_reason: str


DEFAULT_EVAL_EOT = "print-camera"  # the held-out check of an attack optimised without transformations


def resolve_distributions(cfg: AttackConfig) -> Distributions:
    """Load ``--eot`` and pick the held-out distribution.

    ``--eval-eot`` when given; else the same as ``--eot``, unless ``--eot`` is deterministic
    (``none``): then checking on it would render one image a thousand times, so the check
    runs on :data:`DEFAULT_EVAL_EOT` instead, and the record says so.
    """
    dist = eot.load_distribution(cfg.eot)
    if cfg.eval_eot:
        return Distributions(dist, eot.load_distribution(cfg.eval_eot), "given by --eval-eot")
    if dist.deterministic:
        reason = (f"--eot {cfg.eot} is deterministic (every draw is the same image), so the held-out check uses "
                  f"{DEFAULT_EVAL_EOT} by default; give --eval-eot to choose another")
        return Distributions(dist, eot.load_distribution(DEFAULT_EVAL_EOT), reason)
    return Distributions(dist, dist, "the same as --eot (no --eval-eot given)")


def resolve_goal(cfg: AttackConfig, class_names: list[str], spec: str, clean_pred: int, owner: str | None = None) -> Goal:
    """The true and target class indices, by the one class-name lookup (:mod:`physical_adv.classes`).

    The true class is ``--true-class`` when given; for ``sign:NAME`` the sign's own class
    (an error naming the closest classes when the model has none of that name); for an image
    file the model's prediction on the clean image.

    Raises:
        UserError: an unknown class name (``owner`` names whose names were searched), or a
        target equal to the true class.
    """
    owner = owner or f"model {spec}"
    if cfg.true_class:
        true_idx, true_from = class_index(class_names, cfg.true_class, "true", owner), "--true-class"
    elif cfg.source.startswith("sign:"):
        sign = SIGN_CLASSES[sign_class_index(cfg.source[5:])]
        try:
            true_idx = class_index(class_names, sign, "source", owner)
        except UserError as exc:
            raise UserError(f"{exc}; give --true-class NAME to say which of its classes the sign is") from None
        true_from = f"the class of sign:{sign}"
    else:
        true_idx, true_from = clean_pred, "the model's prediction on the clean image (no --true-class given)"
    target_idx = class_index(class_names, cfg.target, "target", owner) if cfg.target else None
    if target_idx is not None and target_idx == true_idx:
        raise UserError(f"the target class {cfg.target!r} is already the source's class")
    return Goal(true_idx, target_idx, true_from)


def build_threat(cfg: AttackConfig, mask_np: np.ndarray | None, input_size: int,
                 device: torch.device, steps: int | None = None) -> tuple[ThreatModel, Callable[[int], float]]:
    """The threat model of ``cfg`` and its step size per step (cosine decay over ``steps``,
    default ``cfg.steps``, between :func:`~physical_adv.attack.schedules.step_sizes`)."""
    steps = cfg.steps if steps is None else steps
    if cfg.patch_mode:
        threat = Patch(torch.from_numpy(mask_np).to(device).view(1, 1, *mask_np.shape))
    elif cfg.norm == "linf":
        threat = LinfBall(cfg.eps_value / 255)
    else:  # L2 measured at the model's input: area-downsampling by k divides a smooth change's norm by k
        threat = L2Ball(cfg.eps_value * cfg.texture_size / input_size)
    alpha = schedules.cosine(*schedules.step_sizes(threat), steps)
    return threat, alpha


def views_per_step(cfg: AttackConfig, dist: eot.EOTDistribution) -> int:
    """How many transformed views each step renders: ``--samples``, or one when every draw of
    ``dist`` is the same image."""
    return 1 if dist.deterministic else cfg.samples


def optimise(cfg: AttackConfig, model, clean: torch.Tensor, goal: Goal, threat: ThreatModel, alpha: Callable[[int], float],
             dist: eot.EOTDistribution, generator: torch.Generator, show_progress: bool) -> tuple[LoopResult, float]:
    """Run the EOT loop on ``clean`` ``(1, 3, S, S)``; returns the loop's result and its seconds."""
    device, views = clean.device, views_per_step(cfg, dist)
    diversity, transforms = transfer_techniques(cfg, model.input_size)
    # DI draws from a stream of its own, so the EOT views of a run with and without it are the same
    di_seed = int(np.random.SeedSequence([cfg.seed, 0xD1]).generate_state(1)[0])
    di_generator = torch.Generator(device=device).manual_seed(di_seed) if diversity is not None else None

    def render_views(x: torch.Tensor) -> torch.Tensor:
        batch = eot.render(x, eot.sample(dist, views, cfg.texture_size, model.input_size, generator, device))
        return batch if diversity is None else diversity(batch, di_generator)

    loss_fn = OBJECTIVES[cfg.loss]
    objective = lambda logits, y: loss_fn(logits, y, goal.targeted)  # noqa: E731
    regularisers = build_regularisers(cfg, device)
    label = torch.tensor([goal.target_idx if goal.targeted else goal.true_idx], device=device)

    early_stop = held_with_margin(cfg, 20)

    with make_progress(disable=not show_progress) as progress:
        task = progress.add_task("attack", total=cfg.steps, info="")

        def report(r: StepReport) -> None:
            info = f"loss {r.objective:+.3f} EOT success {r.success:.2f}"
            progress.update(task, advance=1, info=info)
            if show_progress and not console.is_terminal and (r.step + 1) % max(1, cfg.steps // 10) == 0:
                console.print(f"step {r.step + 1}/{cfg.steps} {info}")  # a log file gets a line every 10 %

        t0 = time.time()
        result = optimize(
            model, clean, label, threat=threat, objective=objective, steps=cfg.steps, alpha=alpha, targeted=goal.targeted,
            render_views=render_views, regularisers=regularisers, random_start=cfg.patch_mode, generator=generator,
            keep_best=True, early_stop=early_stop, callback=report, gradient_transforms=transforms,
        )
    return result, time.time() - t0


def transfer_techniques(cfg: AttackConfig, input_size: int) -> tuple[InputDiversity | None, list]:
    """The transfer techniques of ``cfg``: input diversity on the rendered views (or ``None``)
    and the gradient transforms in the order of TI-MI-FGSM (smooth, then accumulate). TI's
    sigma is given in model-input pixels and applied on the texture, ``texture/input`` times larger."""
    transforms: list = []
    if cfg.ti_sigma:
        transforms.append(TranslationInvariance(cfg.ti_sigma * cfg.texture_size / input_size))
    if cfg.momentum:
        transforms.append(Momentum(cfg.momentum))
    return (InputDiversity(cfg.di_prob) if cfg.di_prob else None), transforms


def build_regularisers(cfg: AttackConfig, device: torch.device) -> list[tuple[float, Callable]]:
    """The weighted smoothness (TV) and printability (NPS, Sharif et al. 2016) terms of ``cfg``; the
    NPS palette is the printer's measured one (``cfg.palette``, a ``calibrate`` output) or 27 colours."""
    if cfg.palette is not None:
        from physical_adv.attack.calibrated import load_calibration

        palette = load_calibration(cfg.palette).palette.to(device)
    else:
        palette = default_palette().to(device)
    return [(cfg.tv_weight, total_variation), (cfg.nps_weight, lambda x: non_printability(x, palette))]


def held_with_margin(cfg: AttackConfig, window: int) -> Callable[[list[StepReport]], bool]:
    """The early stop of ``cfg`` (:func:`physical_adv.attack.schedules.held_with_margin`, off with ``--no-early-stop``)."""
    return schedules.held_with_margin(window, cfg.early_stop)


def _goal_owner(cfg: AttackConfig, spec: str) -> str:
    """Whose class names the goal is looked up in (a URL oracle's are taken to be ``--model``'s)."""
    if cfg.oracle is not None and is_url(cfg.oracle):
        return f"model {spec} (a URL oracle is taken to answer --model's class names)"
    return f"model {spec}"


def start_image(cfg: AttackConfig, target_class: str, device: torch.device) -> torch.Tensor | None:
    """The partial-information start ``(1, 3, S, S)``: ``--start``, else ``sign:TARGET`` when
    the target is a sign class; ``None`` for methods that need none."""
    if cfg.method not in ("partial", "label-only") or cfg.target is None:
        return None
    source = cfg.start
    if source is None:
        try:
            source = f"sign:{SIGN_CLASSES[sign_class_index(target_class)]}"
        except UserError:
            raise UserError(f"--method {cfg.method} starts from an image of the target class: give --start IMAGE "
                            f"(no built-in sign is called {target_class!r})") from None
    return _texture_tensor(_square_texture(load_image(source), cfg.texture_size), device)


def run_blackbox(cfg: AttackConfig, model, clean: torch.Tensor, goal: Goal, mask_np: np.ndarray | None,
                 dist: eot.EOTDistribution, generator: torch.Generator, show_progress: bool):
    """Open the oracle of ``cfg``, check it can answer the goal's classes, and attack it by
    queries only (:func:`physical_adv.attack.blackbox_run.optimise_blackbox`)."""
    from physical_adv.attack.blackbox_run import optimise_blackbox
    from physical_adv.blackbox.target import open_target

    names = model.class_names
    true_class = names[goal.true_idx]
    target_class = names[goal.target_idx] if goal.targeted else None
    start = start_image(cfg, target_class, clean.device) if target_class is not None else None
    target = open_target(cfg.oracle, cfg.mode, cfg.top_k, cfg.budget, clean.device)
    oracle_names = getattr(target, "class_names", None)
    if oracle_names is not None:  # a model oracle: its own names (the local --model may differ)
        owner = f"oracle {cfg.oracle} (it never answers that name)"
        true_class = oracle_names[class_index(list(oracle_names), true_class, "true", owner)]
        if target_class is not None:
            target_class = oracle_names[class_index(list(oracle_names), target_class, "target", owner)]
    threat, _ = build_threat(cfg, mask_np, model.input_size, clean.device)
    return optimise_blackbox(cfg, target, clean, true_class, target_class, threat, model.input_size, dist, generator,
                             build_regularisers(cfg, clean.device), start, show_progress)


def evaluation_draws(cfg: AttackConfig, dist: eot.EOTDistribution) -> int:
    """Held-out draws: ``--eval-samples``, or one when every draw of ``dist`` is the same image."""
    return 1 if dist.deterministic else cfg.eval_samples


def evaluate(cfg: AttackConfig, model, adv: torch.Tensor, clean: torch.Tensor, dist: eot.EOTDistribution, held_seed: int,
             goal: Goal) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Check ``adv`` and ``clean`` on the same held-out draws of ``dist``.

    Returns:
        ``(metrics, preview images (M, 3, h, w), their probabilities (M, C))``.
    """
    n, device = evaluation_draws(cfg, dist), adv.device
    probs, preview_imgs, _ = evaluate_texture(model, adv, dist, n, torch.Generator(device=device).manual_seed(held_seed))
    clean_probs, _, _ = evaluate_texture(model, clean, dist, n, torch.Generator(device=device).manual_seed(held_seed))
    metrics = _metrics(probs, clean_probs, goal, model.class_names, adv, clean, model.input_size, cfg.texture_size,
                       deterministic=dist.deterministic)
    return metrics, preview_imgs, probs[: len(preview_imgs)]


def check_new_run_dir(out: str | Path) -> Path:
    """``out`` as a path, or a :class:`UserError` when something is already there (a run never overwrites)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output {out} already exists and is not an empty directory; choose another --out")
    return out


def run_attack(cfg: AttackConfig, show_progress: bool = True) -> AttackResult:
    """Run the attack of ``cfg`` and write its run directory (see module docs).

    Returns:
        :class:`AttackResult` with the run directory and the ``attack.json`` record.
    """
    started = time.time()
    out = check_new_run_dir(cfg.out)
    dists = resolve_distributions(cfg)
    texture_np = _square_texture(load_image(cfg.source), cfg.texture_size)
    mask_np = build_mask(cfg, cfg.texture_size)
    model = load_model(cfg.model, cfg.device, classes=cfg.classes)
    device = model.device
    opt_seed, held_seed = _seeds(cfg.seed)
    torch.manual_seed(opt_seed)
    generator = torch.Generator(device=device).manual_seed(opt_seed)
    clean = _texture_tensor(texture_np, device)
    clean_pred = _clean_prediction(model, clean, generator)
    goal = resolve_goal(cfg, list(model.class_names), model.spec, clean_pred, _goal_owner(cfg, model.spec))
    transfer_targets = open_transfer_targets(cfg.transfer_to, list(model.class_names), _clean_view(model, clean),
                                             device, cfg.classes) if cfg.transfer_to else []
    blackbox = None
    if cfg.oracle is not None:
        blackbox = run_blackbox(cfg, model, clean, goal, mask_np, dists.optimise, generator, show_progress)
        result, optimise_seconds = blackbox.result, blackbox.seconds
    else:
        threat, alpha = build_threat(cfg, mask_np, model.input_size, device)
        result, optimise_seconds = optimise(cfg, model, clean, goal, threat, alpha, dists.optimise, generator, show_progress)
    adv = result.x.detach()
    metrics, preview_imgs, preview_probs = evaluate(cfg, model, adv, clean, dists.evaluate, held_seed, goal)
    metrics.update(optimise_seconds=round(optimise_seconds, 2), steps_run=len(result.history), best_step=result.best_step,
                   stopped_early=result.stopped_early, wall_seconds=round(time.time() - started, 2))
    record = _record(cfg, model, goal, clean_pred, dists, (opt_seed, held_seed), mask_np, metrics)
    if blackbox is not None:
        record["blackbox"] = blackbox.record
    if transfer_targets:
        names = model.class_names
        record["transfer"] = evaluate_transfer(
            transfer_targets, model, adv, dists.evaluate, evaluation_draws(cfg, dists.evaluate), held_seed,
            names[goal.true_idx], names[goal.target_idx] if goal.targeted else None)
    _write_run_dir(out, record, clean, adv, mask_np, result, preview_imgs, preview_probs, model.class_names,
                   goal.true_idx, goal.target_idx, blackbox.queries if blackbox is not None else None)
    return AttackResult(out, record)


def _clean_prediction(model, clean: torch.Tensor, generator: torch.Generator) -> int:
    """The model's class for the clean texture, area-downsampled to its input (the ``none`` render)."""
    with torch.no_grad():
        return int(model(_clean_view(model, clean, generator)).argmax(1)[0])


def _clean_view(model, clean: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The clean texture area-downsampled to the model's input ``(1, 3, h, w)`` by the ``none``
    render (also the probe sent once to a ``--transfer-to`` URL; ``generator`` defaults to a fresh one)."""
    none = eot.load_distribution("none")
    generator = generator if generator is not None else torch.Generator(device=clean.device).manual_seed(0)
    with torch.no_grad():
        return eot.render(clean, eot.sample(none, 1, clean.shape[-1], model.input_size, generator, clean.device))


def _record(cfg: AttackConfig, model, goal: Goal, clean_pred: int, dists: Distributions, seeds: tuple[int, int],
            mask_np: np.ndarray | None, metrics: dict) -> dict:
    """The ``attack.json`` record (see the README's run-directory table)."""
    names = model.class_names
    return {
        "schema": SCHEMA,
        "kind": "attack",
        "created": utc_now(),
        "config": {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "eps_effective": None if cfg.patch_mode else cfg.eps_value,
        "threat": "patch" if cfg.patch_mode else cfg.norm,
        "targeted": goal.targeted,
        "model": {"spec": model.spec, "input_size": model.input_size, "weights": model.card.weights,
                  **({"members": model.card.extra["members"]} if "members" in model.card.extra else {})},
        "class_names": list(names),
        "true_class": names[goal.true_idx],
        "true_class_from": goal.true_class_from,
        "target_class": names[goal.target_idx] if goal.targeted else None,
        "clean_prediction": names[clean_pred],
        "eot_distribution": eot.distribution_to_dict(dists.optimise),
        "views_per_step": views_per_step(cfg, dists.optimise),
        "eval_distribution": eot.distribution_to_dict(dists.evaluate),
        "eval_distribution_reason": dists.evaluate_reason,
        "seeds": {"seed": cfg.seed, "optimisation": seeds[0], "heldout": seeds[1]},
        "patch_fraction": float(mask_np.mean()) if mask_np is not None else None,
        "metrics": metrics,
        "versions": software_versions(),
        "device": str(model.device),
    }


def _metrics(probs, clean_probs, goal: Goal, class_names, adv, clean, input_size, texture_size, deterministic=False) -> dict:
    """Success rates on the held-out draws (one rule: :func:`physical_adv.outcome.attack_succeeded`)
    and the size of the change. Over a deterministic distribution there is one draw and no interval."""
    true_class = class_names[goal.true_idx]
    target_class = class_names[goal.target_idx] if goal.targeted else None

    def hits(p: torch.Tensor) -> int:
        return sum(attack_succeeded(class_names[k], true_class, target_class) for k in p.argmax(1).tolist())

    n = len(probs)
    adv_hits, clean_hits = hits(probs), hits(clean_probs)
    delta = (adv - clean).cpu()
    small = torch.nn.functional.adaptive_avg_pool2d(delta, input_size)
    ci = None if deterministic else [round(v, 4) for v in wilson_interval(adv_hits, n)]
    metrics = {
        "eot_success": adv_hits / n,
        "eot_success_ci95": ci,
        "eot_samples": n,
        "clean_eot_success": clean_hits / n,
        "mean_target_prob": float(probs[:, goal.target_idx].mean()) if goal.targeted else None,
        "mean_true_prob": float(probs[:, goal.true_idx].mean()),
        "clean_mean_true_prob": float(clean_probs[:, goal.true_idx].mean()),
        "linf_255": round(float(delta.abs().max()) * 255, 3),
        "l2_texture": round(float(delta.norm()), 4),
        "l2_at_input_size": round(float(small.norm()), 4),
        "texture_size": texture_size,
    }
    if deterministic:
        metrics["eot_success_note"] = ("the evaluation distribution is deterministic: one draw was checked, and a "
                                       "confidence interval over identical draws would be meaningless")
    return metrics


def _to_uint8(t: torch.Tensor) -> np.ndarray:
    return (t.detach().clamp(0, 1).squeeze(0).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _write_run_dir(out, record, clean, adv, mask, result, preview_imgs, preview_probs, class_names, true_idx, target_idx,
                   queries=None):
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        save_png(tmp / "adversarial.png", _to_uint8(adv))
        save_png(tmp / "clean.png", _to_uint8(clean))
        save_png(tmp / "perturbation.png", perturbation_picture(_to_uint8(clean), _to_uint8(adv), mask))
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["step", "objective", "batch_success", "margin", "alpha"])
        for r in result.history:
            writer.writerow([r.step, f"{r.objective:.5f}", f"{r.success:.4f}", f"{r.margin:.4f}", f"{r.alpha:.6f}"])
        atomic_write_bytes(tmp / "progress.csv", buf.getvalue().encode())
        if queries is not None:  # black-box: the queries spent by each step
            buf = io.StringIO()
            writer = csv.writer(buf)
            writer.writerow(["step", "queries", "objective", "batch_success"])
            for r, q in zip(result.history, queries):
                writer.writerow([r.step, q, f"{r.objective:.5f}", f"{r.success:.4f}"])
            atomic_write_bytes(tmp / "queries.csv", buf.getvalue().encode())
        from physical_adv.attack.preview import eot_preview

        eot_preview(tmp / "eot_preview.png", preview_imgs, preview_probs, class_names, true_idx, target_idx, record)
        atomic_write_json(tmp / "attack.json", record)
        if out.exists():
            out.rmdir()  # checked empty before the run
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def perturbation_picture(clean: np.ndarray, adv: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The change made visible: mid-grey + difference stretched to the full range (L∞/L2),
    or the patch over a faded clean image (patch mode)."""
    diff = adv.astype(np.float32) - clean.astype(np.float32)
    if mask is not None:
        faded = 255 - (255 - clean.astype(np.float32)) * 0.3
        return np.where(mask[..., None] > 0, adv, faded).astype(np.uint8)
    scale = 127.0 / max(1.0, float(np.abs(diff).max()))
    return np.clip(128 + diff * scale, 0, 255).astype(np.uint8)
