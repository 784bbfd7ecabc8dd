"""A local substitute for a model seen only through its top-1 labels (Papernot et al. 2017).

"Practical Black-Box Attacks against Machine Learning" (Papernot, McDaniel, Goodfellow, Jha,
Celik, Swami, AsiaCCS 2017), Algorithm 1: label a small seed set through the oracle, train a
substitute on it, and grow the set with Jacobian-based dataset augmentation

    S_{ρ+1} = S_ρ ∪ { clip(x + λ_ρ · sign(∇ₓ F_sub[Õ(x)](x)), 0, 1) : x ∈ S_ρ },   λ_ρ = λ · (−1)^⌊ρ/τ⌋

where ``F_sub[c]`` is the substitute's softmax probability of class ``c`` and ``Õ(x)`` the
oracle's label. Once doubling the whole set would cost more than the budget (or ``κ`` new
points), only a random reservoir of the set is augmented (the paper's reservoir sampling).

Every image the oracle labels goes through one :class:`~physical_adv.blackbox.target.QueryTarget`
in ``label`` mode, whose counter is the budget. The probe set that measures agreement during
training is labelled by the oracle too (an attacker has no other labels); it is counted apart,
as ``probe_queries``, and can be sized or skipped with ``probe``.

Random streams: the seed set draws scenes from ``(SEED_STREAM, seed)`` and the probe from
``(PROBE_STREAM, seed)``; neither is the training stream of ``signs`` (``TRAIN_STREAM``) nor its
held-out evaluation stream (``EVAL_STREAM``), on which the benchmark scores the result.

Interruptions: after every round's augmentation the run writes one checkpoint file beside
``out`` (:func:`checkpoint_path`: the labelled set, the substitute, every RNG state, the
rounds so far and the labels paid for). Rerunning with the same options resumes there —
bit-identical to a run that never stopped, and no label is bought twice; the checkpoint is
removed once the model directory is in place.
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from physical_adv.artifacts import atomic_write_bytes, atomic_write_json, replace_folder, software_versions, utc_now
from physical_adv.blackbox.target import BudgetExhausted, QueryTarget, open_target
from physical_adv.classes import normalise
from physical_adv.errors import UserError
from physical_adv.images import IMAGE_SUFFIXES, load_image, to_batch
from physical_adv.models.archs import DEFAULT_INPUT_SIZE, build_arch, check_arch
from physical_adv.models.base import Classifier, ModelCard
from physical_adv.models.signs_net import SIGNS_INPUT_SIZE, SIGNS_MEAN, SIGNS_STD
from physical_adv.models.stored import save_model
from physical_adv.stats import wilson_interval
from physical_adv.ui import console, make_progress

SEED_STREAM = 0x5EED  # seed-set scenes (sign:* and scenes:N); signs trains on TRAIN_STREAM = 0x7A1
PROBE_STREAM = 0x960BE  # the attacker's probe scenes; signs is evaluated on EVAL_STREAM = 0xE7A
SCENE_SIZE = SIGNS_INPUT_SIZE  # every image is sent to the oracle and trained on at 64 px
RECORD_NAME = "substitute.json"
JITTERS = ("none", "mild", "strong")  # label-keeping transforms of the training points


@dataclass(frozen=True)
class SubstituteConfig:
    """Options of ``physical-adv substitute``; validated on construction.

    Attributes:
        oracle: model spec or ``http(s)://`` URL of the label-only target.
        out: the model directory to write.
        budget: oracle labels for the training set at most (the probe is counted apart).
        rounds: substitute training rounds; ``rounds − 1`` augmentations between them.
        lam: Jacobian step λ on [0, 1] images.
        tau: the sign of λ flips every ``tau`` augmentations.
        kappa: new points per augmentation at most (reservoir); None: as many as the budget allows.
        seed_set: ``sign:*`` (``per_class`` rendered scenes per class), ``scenes:N`` (N scenes of
            random classes: an attacker who can sample the input distribution) or a folder of images.
        per_class: scenes per class for ``sign:*``.
        arch, width, input_size: the substitute network (input side None: the architecture's).
        epochs: passes over the current set per round.
        warm_start: continue from the previous round's weights (cleverhans) instead of from scratch (the paper).
        jitter: label-keeping random transforms of the training points (:func:`label_keeping_jitter`).
        query_jitter: transforms applied to the chosen points before their Jacobian step, so the new
            queries are more varied than the seeds (``none``: Papernot's ``x + λ·sign(∇)`` exactly).
        probe: oracle-labelled probe scenes for the per-round agreement (0: none).
        classes: file of the oracle's class names (default: the signs classes).
    """

    oracle: str
    out: Path
    budget: int = 6400
    rounds: int = 7
    lam: float = 0.1
    tau: int = 3
    kappa: int | None = None
    seed_set: str = "sign:*"
    per_class: int = 10
    arch: str = "signnet"
    width: int = 16
    input_size: int | None = 64
    epochs: int = 20
    batch_size: int = 32
    lr: float = 3e-3
    warm_start: bool = True
    jitter: str = "strong"
    query_jitter: str = "none"
    probe: int = 500
    classes: str | None = None
    seed: int = 0
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("budget", "rounds", "tau", "per_class", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.kappa is not None and self.kappa < 1:
            raise ValueError(f"kappa must be a positive integer, got {self.kappa}")
        if not 0 < self.lam <= 1:
            raise ValueError(f"lambda must be in (0, 1] (a step on [0, 1] images), got {self.lam}")
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if self.probe < 0:
            raise ValueError(f"probe must be ≥ 0 scenes, got {self.probe}")
        check_arch(self.arch, self.input_size)
        if self.width < 4:
            raise ValueError(f"width must be at least 4, got {self.width}")
        for name in ("jitter", "query_jitter"):
            if getattr(self, name) not in JITTERS:
                raise ValueError(f"{name.replace('_', '-')} must be one of {', '.join(JITTERS)}, got {getattr(self, name)!r}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be ≥ 1, got {self.threads}")

    @property
    def net_input_size(self) -> int:
        return self.input_size or DEFAULT_INPUT_SIZE[self.arch]


# --------------------------------------------------------------------------- images


def rendered_scenes(stream: int, seed: int, labels: np.ndarray) -> torch.Tensor:
    """Scenes of the given classes from the scene generator, ``(N, 3, 64, 64)`` in [0, 1].

    Args:
        stream: the random stream (:data:`SEED_STREAM`, :data:`PROBE_STREAM`, …).
        seed: the run's seed; ``(stream, seed)`` fixes every scene.
        labels: class indices into the signs classes, one per scene.
    """
    from physical_adv.signs.designs import CLASS_NAMES
    from physical_adv.signs.scenes import SignBank, render_scene

    rng = np.random.default_rng([stream, seed])
    # the generator's bank of 24 looks per class, or fewer for a small set (about one look per scene;
    # drawing the bank is most of the cost of a few scenes)
    bank = SignBank(rng, styles_per_class=min(24, max(2, math.ceil(len(labels) / len(CLASS_NAMES)))))
    return to_batch(np.stack([render_scene(rng, bank, int(y), SCENE_SIZE) for y in labels]))


def seed_set_images(spec: str, per_class: int, seed: int) -> tuple[torch.Tensor, dict]:
    """The attacker's starting images (their labels come from the oracle only).

    Args:
        spec: ``sign:*``, ``scenes:N`` or a folder of image files.
        per_class: scenes per sign class for ``sign:*``.
        seed: the run's seed.

    Returns:
        ``(images (N, 3, 64, 64) in [0, 1], description for substitute.json)``.
    """
    from physical_adv.signs.designs import CLASS_NAMES

    text = spec.strip()
    if text == "sign:*":
        labels = np.repeat(np.arange(len(CLASS_NAMES)), per_class)
        return rendered_scenes(SEED_STREAM, seed, labels), {"kind": "sign:*", "per_class": per_class, "stream": SEED_STREAM}
    if text.startswith("scenes:"):
        try:
            n = int(text[len("scenes:"):])
        except ValueError:
            n = 0
        if n < 1:
            raise UserError(f"--seed-set scenes:N needs a positive number of scenes, got {spec!r}")
        labels = np.random.default_rng([SEED_STREAM, seed, 1]).integers(0, len(CLASS_NAMES), n)
        return rendered_scenes(SEED_STREAM, seed, labels), {"kind": "scenes", "n": n, "stream": SEED_STREAM}
    folder = Path(text)
    if not folder.is_dir():
        raise UserError(f"--seed-set must be sign:*, scenes:N or a folder of images, got {spec!r}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"seed-set folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return to_batch([load_image(p) for p in files], size=SCENE_SIZE), {"kind": "folder", "path": str(folder), "n": len(files)}


def known_classes(classes: str | None) -> tuple[str, ...]:
    """The class list the substitute predicts: the lines of ``classes``, else the signs classes."""
    if classes is None:
        from physical_adv.signs.designs import CLASS_NAMES

        return tuple(CLASS_NAMES)
    from physical_adv.models.scripted import read_class_names

    names = read_class_names(classes)  # the one class-file reader (blank lines and # comments skipped)
    if len(names) < 2 or len({normalise(n) for n in names}) != len(names):
        raise UserError(f"the class list {classes} needs at least two distinct names, one per line")
    return tuple(names)


# --------------------------------------------------------------------------- the oracle


def oracle_labels(target: QueryTarget, images: torch.Tensor, class_names: tuple[str, ...]) -> torch.Tensor:
    """Ask the oracle for the top-1 label of every image (each one counted by ``target``).

    Returns:
        ``(N,)`` int64 indices into ``class_names``. A name outside the list is a :class:`UserError`.
    """
    keys = {normalise(name): i for i, name in enumerate(class_names)}
    out = []
    for labels in target.query(images):
        name = labels[0].description if labels else ""
        if normalise(name) not in keys:
            sample = ", ".join(class_names[:6]) + (" …" if len(class_names) > 6 else "")
            raise UserError(f"the oracle {target.name()} answered {name!r}, which is not one of the {len(class_names)} "
                            f"known classes ({sample}); give its class list with --classes FILE")
        out.append(keys[normalise(name)])
    return torch.tensor(out, dtype=torch.int64)


# --------------------------------------------------------------------------- the substitute


def jacobian_augment(model: Classifier, images: torch.Tensor, labels: torch.Tensor, lam: float, batch: int = 256) -> torch.Tensor:
    """Papernot's new points ``clip(x + λ · sign(∇ₓ softmax(F_sub(x))[y]), 0, 1)``.

    Args:
        model: the substitute, ``(N, 3, H, W)`` in [0, 1] → logits.
        images: ``(N, 3, H, W)`` in [0, 1].
        labels: ``(N,)`` the oracle's labels of ``images``.
        lam: the signed step λ_ρ.

    Returns:
        ``(N, 3, H, W)`` in [0, 1], detached.
    """
    model.eval()
    device = model.device
    out = []
    for x, y in zip(images.split(batch), labels.split(batch)):
        x = x.to(device).requires_grad_(True)
        prob = model(x).softmax(dim=1).gather(1, y.to(device)[:, None]).sum()
        (grad,) = torch.autograd.grad(prob, x)
        out.append((x.detach() + lam * grad.sign()).clamp_(0, 1).cpu())
    return torch.cat(out) if out else images.clone()


def label_keeping_jitter(x: torch.Tensor, strength: str, gen: torch.Generator) -> torch.Tensor:
    """Random transforms a sign's class survives, applied to a training batch (labels unchanged).

    ``mild``: one shift of up to 3 px for the batch, ±15 % brightness and contrast per image.
    ``strong``: per image a rotation of up to ±12°, scale 0.85–1.15, shift up to ±8 % of the side,
    ±25 % contrast, ±10 % brightness, ±10 % per-channel gain, a blur (σ ≤ 1 px) on half the images
    and sensor noise (σ ≤ 0.03) — the kinds of change a camera makes, milder than the scene generator's.

    Args:
        x: ``(N, 3, H, W)`` in [0, 1].
        strength: one of :data:`JITTERS`.

    Returns:
        ``(N, 3, H, W)`` in [0, 1].
    """
    if strength == "none":
        return x
    n = x.shape[0]

    def uniform(*shape, low=-1.0, high=1.0):
        return low + (high - low) * torch.rand(*shape, generator=gen)

    if strength == "mild":
        dx, dy = torch.randint(-3, 4, (2,), generator=gen).tolist()
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        return (x * (1 + 0.15 * uniform(n, 1, 1, 1)) + 0.05 * uniform(n, 1, 1, 1)).clamp(0, 1)
    angle = uniform(n) * math.radians(12)
    scale = 1 + 0.15 * uniform(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, 0.16 * uniform(n)], 1), torch.stack([sin, cos, 0.16 * uniform(n)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    mix = (torch.rand(n, 1, 1, 1, generator=gen) < 0.5) * torch.rand(n, 1, 1, 1, generator=gen)
    x = x + (blurred - x) * mix
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + 0.25 * uniform(n, 1, 1, 1)) + mean + 0.1 * uniform(n, 1, 1, 1)
    x = x * (1 + 0.1 * uniform(n, 3, 1, 1))
    x = x + 0.03 * torch.rand(n, 1, 1, 1, generator=gen) * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 1)


def new_substitute(cfg: SubstituteConfig, class_names: tuple[str, ...], device: torch.device) -> Classifier:
    net = build_arch(cfg.arch, len(class_names), width=cfg.width)
    card = ModelCard("substitute", class_names, cfg.net_input_size, str(cfg.out), extra={"arch": cfg.arch})
    return Classifier(net, card, SIGNS_MEAN, SIGNS_STD).to(device)


def train_round(model: Classifier, images: torch.Tensor, labels: torch.Tensor, cfg: SubstituteConfig, gen: torch.Generator) -> float:
    """``cfg.epochs`` passes of Adam (one-cycle learning rate) over the labelled set; returns seconds."""
    t0 = time.time()
    steps_per_epoch = max(1, math.ceil(len(images) / cfg.batch_size))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2)
    device = model.device
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(images), generator=gen)
        for idx in order.split(cfg.batch_size):
            if len(idx) < 2:  # batch norm needs two images
                continue
            x = images[idx]
            x = label_keeping_jitter(x, cfg.jitter, gen)
            loss = F.cross_entropy(model(x.to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return time.time() - t0


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """``(N,)`` top-1 indices of ``model`` on ``images`` ``(N, 3, H, W)`` in [0, 1]."""
    model.eval()
    return torch.cat([model(x.to(model.device)).argmax(1).cpu() for x in images.split(batch)]) if len(images) else torch.zeros(0, dtype=torch.int64)


def agreement(model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """How often the substitute's top-1 equals ``labels``: ``{"agreement", "low", "high", "n"}`` (Wilson 95 %)."""
    k = int((predict(model, images) == labels).sum())
    n = len(labels)
    low, high = wilson_interval(k, n)
    return {"agreement": k / n if n else float("nan"), "low": low, "high": high, "n": n}


# --------------------------------------------------------------------------- the loop


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder that is not a previous substitute."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / RECORD_NAME).is_file():
        raise UserError(f"{out} is not empty and is not a previous substitute; choose another --out (nothing was changed)")


def checkpoint_path(out: Path) -> Path:
    """Where a run writing ``out`` keeps its per-round checkpoint (a hidden sibling file)."""
    out = Path(out)
    return out.parent / f".{out.name}.substitute-checkpoint.safetensors"


def _resume_key(cfg: SubstituteConfig) -> dict:
    """The options that must match for a checkpoint to be resumed (where it runs may differ)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k not in ("device", "threads")}


def save_checkpoint(cfg: SubstituteConfig, state: dict, tensors: dict[str, torch.Tensor]) -> None:
    """One file, written atomically: the labelled set, the substitute, every RNG state, and
    (in its metadata) the rounds so far and the oracle labels already paid for."""
    from safetensors.torch import save

    meta = {"state": json.dumps({**state, "config": _resume_key(cfg)})}
    atomic_write_bytes(checkpoint_path(cfg.out), save({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                                                      metadata=meta))


def load_checkpoint(cfg: SubstituteConfig) -> tuple[dict, dict[str, torch.Tensor]] | None:
    """The checkpoint of an interrupted run with the same options, or ``None`` (none, or another
    run's: that one is said and will be replaced)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = checkpoint_path(cfg.out)
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as fh:
            state = json.loads((fh.metadata() or {})["state"])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, KeyError, ValueError):
        console.print(f"[yellow]ignoring an unreadable checkpoint {path}; starting afresh[/yellow]")
        return None
    if state.get("config") != _resume_key(cfg):
        console.print(f"[yellow]{path} is a checkpoint of a run with other options; starting afresh "
                      "(it is replaced after the first round)[/yellow]")
        return None
    return state, tensors


def train_substitute(cfg: SubstituteConfig, show_progress: bool = True, target: QueryTarget | None = None,
                     probe_target: QueryTarget | None = None) -> dict:
    """Papernot's substitute training against ``cfg.oracle``; writes the model directory ``cfg.out``.

    Args:
        cfg: the run's options.
        show_progress: a progress bar and one line per round on stderr.
        target: an already opened oracle (tests, benchmarks); by default ``cfg.oracle`` is opened
            in ``label`` mode with ``cfg.budget``.
        probe_target: the oracle that labels the probe, counted apart (default: ``cfg.oracle`` opened again).

    Returns:
        The record written to ``OUT/substitute.json``: config, versions, the oracle's description,
        per-round ``queries``, ``set_size``, ``new_points``, ``lambda``, ``train_seconds`` and probe
        ``agreement`` with its Wilson interval, and ``probe_queries`` (counted apart from the budget).
        The folder appears complete or not at all (written aside and renamed at the end).
    """
    from physical_adv.devices import resolve_device

    check_out(cfg.out)
    class_names = known_classes(cfg.classes)
    seeds, seed_info = seed_set_images(cfg.seed_set, cfg.per_class, cfg.seed)
    if cfg.budget < len(seeds):
        raise UserError(f"--budget {cfg.budget} is smaller than the seed set ({len(seeds)} images): "
                        "every seed image costs one oracle label")
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    resume = load_checkpoint(cfg)
    spent = resume[0]["queries"] if resume else 0  # labels an interrupted run already paid for
    if resume:
        console.print(f"resuming from {checkpoint_path(cfg.out)}: round {resume[0]['next_round']}, "
                      f"{spent} oracle labels already spent")
    opened = []
    if target is None:
        target = open_target(cfg.oracle, mode="label", top_k=1, budget=cfg.budget - spent, device=device, classes=cfg.classes)
        opened.append(target)
    elif target.mode != "label":
        raise UserError(f"the substitute's oracle must answer in label mode, not {target.mode}")
    probe_paid = resume is not None and "probe_labels" in resume[1]
    if cfg.probe and probe_target is None and not probe_paid:
        probe_target = open_target(cfg.oracle, mode="label", top_k=1, budget=cfg.probe, device=device, classes=cfg.classes)
        opened.append(probe_target)
    t_start = time.time()
    try:
        probe = None
        if cfg.probe:
            from physical_adv.signs.designs import CLASS_NAMES

            probe_images = rendered_scenes(PROBE_STREAM, cfg.seed, np.arange(cfg.probe) % len(CLASS_NAMES))
            probe = probe_images, (resume[1]["probe_labels"] if probe_paid else
                                   oracle_labels(probe_target, probe_images, class_names))
        model, rounds, stopped = papernot_rounds(cfg, target, seeds, class_names, probe, device, show_progress,
                                                 resume=resume)
    finally:
        for opened_target in opened:
            getattr(opened_target, "close", lambda: None)()
    record = {
        "schema": 1,
        "kind": "substitute",
        "created": utc_now(),
        "method": "Papernot et al. 2017, Jacobian-based dataset augmentation with reservoir sampling",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "oracle": target.describe(),
        "class_names": list(class_names),
        "seed_set": {**seed_info, "size": len(seeds)},
        "queries": spent + target.queries,
        "resumed_at_round": resume[0]["next_round"] if resume else None,
        "probe": {"n": cfg.probe, "stream": PROBE_STREAM, "seed": cfg.seed, "classes": "round-robin",
                  "queries_counted_apart": True} if cfg.probe else None,
        "probe_queries": cfg.probe,  # labelled once (before round 0), counted apart from the budget
        "rounds": rounds,
        "stopped": stopped,
        "seconds": round(time.time() - t_start, 1),
        "arch": cfg.arch,
        "arch_kwargs": {"width": cfg.width},
        "input_size": cfg.net_input_size,
        "versions": software_versions(),
    }
    write_model_dir(model, cfg, record)
    checkpoint_path(cfg.out).unlink(missing_ok=True)
    return record


def papernot_rounds(cfg: SubstituteConfig, target: QueryTarget, seeds: torch.Tensor, class_names: tuple[str, ...],
                    probe: tuple[torch.Tensor, torch.Tensor] | None, device: torch.device,
                    show_progress: bool, resume: tuple[dict, dict] | None = None) -> tuple[Classifier, list[dict], str | None]:
    """Algorithm 1 of Papernot et al.: label, train, augment, ``cfg.rounds`` times.

    Args:
        seeds: ``(N, 3, 64, 64)`` in [0, 1], labelled here through ``target``.
        probe: ``(images, oracle labels)`` to measure agreement after every round, or None.
        resume: a checkpoint (:func:`load_checkpoint`) to continue from. One is written after
            every round's augmentation, so an interrupted run loses at most the round in progress
            and never pays twice for a label; resuming gives the same substitute as not stopping.

    Returns:
        ``(substitute, one dict per round, why it stopped early or None)``.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    model = new_substitute(cfg, class_names, device)
    rounds: list[dict] = []
    first, spent = 0, 0  # the round to start at; labels paid for before a resume
    if resume is None:
        images, labels = seeds, oracle_labels(target, seeds, class_names)
    else:
        state, tensors = resume
        images, labels = tensors["images"], tensors["labels"]
        model.net.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
        gen.set_state(tensors["gen_state"])
        torch.set_rng_state(tensors["torch_rng"])
        rounds, first, spent = state["rounds"], state["next_round"], state["queries"]

    def queries() -> int:
        return spent + target.queries

    stopped = None
    with make_progress(disable=not show_progress) as progress:
        task = progress.add_task("substitute", total=cfg.rounds, completed=first, info=f"queries {queries()}")
        for rho in range(first, cfg.rounds):
            if rho and not cfg.warm_start:
                model = new_substitute(cfg, class_names, device)
            seconds = train_round(model, images, labels, cfg, gen)
            row = {"round": rho, "set_size": len(images), "queries": queries(), "train_seconds": round(seconds, 2)}
            if probe is not None:
                row["probe"] = agreement(model, *probe)
            rounds.append(row)
            info = f"queries {queries()}/{cfg.budget}  set {len(images)}" + (
                f"  agreement {row['probe']['agreement']:.1%}" if "probe" in row else "")
            progress.update(task, advance=1, info=info)
            if show_progress:
                console.print(f"round {rho}: {info}  ({seconds:.1f} s)")
            if rho == cfg.rounds - 1:
                break
            new = min(len(images), cfg.kappa or len(images), cfg.budget - queries())
            if new < 1:
                stopped = "budget spent"
                break
            lam = cfg.lam * (-1) ** (rho // cfg.tau)
            # reservoir sampling: once the whole set cannot be doubled, augment a random subset of it
            pick = torch.randperm(len(images), generator=gen)[:new] if new < len(images) else torch.arange(len(images))
            base = label_keeping_jitter(images[pick], cfg.query_jitter, gen)  # "none": the paper's x itself
            fresh = jacobian_augment(model, base, labels[pick] if cfg.query_jitter == "none" else predict(model, base), lam)
            try:
                fresh_labels = oracle_labels(target, fresh, class_names)
            except BudgetExhausted:  # a server with its own budget (HTTP 429): keep what we have
                stopped = "the oracle's own budget ran out"
                break
            row.update(new_points=new, reservoir=new < len(images), **{"lambda": lam})
            images, labels = torch.cat([images, fresh]), torch.cat([labels, fresh_labels])
            tensors = {"images": images, "labels": labels, "gen_state": gen.get_state(), "torch_rng": torch.get_rng_state(),
                       **{f"model.{k}": v for k, v in model.net.state_dict().items()}}
            if probe is not None:
                tensors["probe_labels"] = probe[1]
            save_checkpoint(cfg, {"next_round": rho + 1, "rounds": rounds, "queries": queries()}, tensors)
    return model, rounds, stopped


def write_model_dir(model: Classifier, cfg: SubstituteConfig, record: dict) -> None:
    """Write ``model.safetensors``, ``model.json`` and ``substitute.json`` aside, then swap the folder in."""
    out = cfg.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.substitute-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        save_model(model.net, tmp, record, arch=cfg.arch, arch_kwargs={"width": cfg.width}, input_size=cfg.net_input_size,
                   class_names=model.class_names, mean=SIGNS_MEAN, std=SIGNS_STD)
        atomic_write_json(tmp / RECORD_NAME, record)
        replace_folder(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
