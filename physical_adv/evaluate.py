"""``physical-adv evaluate``: one fixed suite of attacks on each model, one table.

The suite (``suites/default.toml``, or ``--attacks FILE.toml`` of the same format) is a list of
items of three kinds, each giving one row per model:

* ``clean`` — top-1 accuracy on fresh held-out scenes (:func:`physical_adv.signs.train.evaluate`;
  signs-family models only, the row says *n/a* for other class sets);
* ``pgd`` — digital robust accuracy under PGD (Madry et al. 2018) with random restarts, batched
  through :func:`physical_adv.attack.whitebox.pgd`, on the first ``n`` scenes of the same held-out
  stream: a scene counts as robust only if it is classified correctly clean and after every restart;
* ``eot`` — an EOT attack re-optimised against *this* model (the adaptive attacker) by
  :func:`physical_adv.attack.runner.run_attack`, once per optimisation seed, each writing the run
  directory ``OUT/runs/<model-slug>/<item>-seed<k>``; the row is the held-out success over seeds
  (mean, min–max, each seed's Wilson interval).

``--runs`` adds transfer rows: each given run's ``adversarial.png`` scored on each model over the
run's own held-out draws, exactly as ``attack --transfer-to`` does
(:func:`physical_adv.attack.transfer.evaluate_transfer`).

Resumable: a run directory that already holds ``attack.json`` (written last, by a rename) is read,
not recomputed, once its recorded options are checked to be the ones asked for; clean and PGD rows of
an earlier ``evaluate.json`` in ``OUT`` are reused when the item and the model's weights are the same.
``evaluate.json`` is rewritten atomically after every item, so an interrupted run leaves a partial table.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from physical_adv.artifacts import atomic_write_json, read_json, read_named_toml, software_versions, utc_now
from physical_adv.errors import UserError
from physical_adv.stats import seed_summary, wilson_interval
from physical_adv.ui import console, make_progress

SCHEMA = 1
SUITE_DIR = Path(__file__).resolve().parent / "suites"
DEFAULT_SUITE = "default"
DEFAULT_SEEDS = (0, 1, 2)
SCENES = ("mixed", "wild", "print", "sheet")
PGD_SEED = 0  # the random starts of every PGD item (the scenes are fixed by the held-out stream)
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# --quick caps every size (smoke runs and tests); documented in `physical-adv evaluate --help`
QUICK = {"clean_n": 100, "pgd_n": 16, "pgd_steps": 5, "pgd_restarts": 2,
         "eot_steps": 3, "eot_samples": 4, "eot_eval_samples": 50, "eot_texture_size": 128}


# ---------------------------------------------------------------- the suite


def _check_id(item_id) -> None:
    if not isinstance(item_id, str) or not _ID.match(item_id):
        raise ValueError(f"item id must be letters, digits, '.', '_' or '-' (it names run directories), got {item_id!r}")


def _check_scenes(scenes) -> None:
    if scenes not in SCENES:
        raise ValueError(f"scenes must be one of {', '.join(SCENES)}, got {scenes!r}")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class CleanItem:
    """Clean top-1 accuracy on ``n`` fresh held-out scenes of one kind (``mixed`` = the training mix)."""

    id: str
    label: str = ""
    n: int = 2000
    scenes: str = "mixed"
    kind: ClassVar[str] = "clean"

    def __post_init__(self) -> None:
        _check_id(self.id)
        _positive_int("n", self.n)
        _check_scenes(self.scenes)

    def quick(self) -> "CleanItem":
        return replace(self, n=min(self.n, QUICK["clean_n"]), label=f"{self.title} [--quick]")

    @property
    def title(self) -> str:
        return self.label or f"clean accuracy, fresh {self.scenes} scenes"


@dataclass(frozen=True)
class PGDItem:
    """Digital untargeted L∞ PGD with ``restarts`` random starts on ``n`` held-out scenes;
    ``eps`` and ``alpha`` in /255 units (``alpha`` default ``2.5·eps/steps``, Madry et al.'s rule)."""

    id: str
    label: str = ""
    eps: float = 8.0
    n: int = 500
    steps: int = 50
    restarts: int = 3
    alpha: float | None = None
    scenes: str = "mixed"
    kind: ClassVar[str] = "pgd"

    def __post_init__(self) -> None:
        _check_id(self.id)
        if isinstance(self.eps, bool) or not isinstance(self.eps, (int, float)) or not 0 < self.eps <= 255:
            raise ValueError(f"eps must be in (0, 255] (/255 units), got {self.eps!r}")
        for name in ("n", "steps", "restarts"):
            _positive_int(name, getattr(self, name))
        if self.alpha is not None and (not isinstance(self.alpha, (int, float)) or not self.alpha > 0):
            raise ValueError(f"alpha must be > 0 (/255 units), got {self.alpha!r}")
        _check_scenes(self.scenes)

    @property
    def alpha_value(self) -> float:
        """The step size in /255 units."""
        return float(self.alpha) if self.alpha is not None else 2.5 * self.eps / self.steps

    def quick(self) -> "PGDItem":
        small = replace(self, n=min(self.n, QUICK["pgd_n"]), steps=min(self.steps, QUICK["pgd_steps"]),
                        restarts=min(self.restarts, QUICK["pgd_restarts"]), label="")
        return replace(small, label=f"{small.title} [--quick]")

    @property
    def title(self) -> str:
        return self.label or f"digital PGD-{self.steps} ×{self.restarts} restarts, ε = {self.eps:g}/255"


# the attack options a suite may set; model, out, seed and device come from `evaluate` itself
EOT_OPTIONS = ("source", "target", "true_class", "eps", "norm", "patch", "patch_area", "patch_position", "mask", "eot",
               "eval_eot", "samples", "steps", "eval_samples", "loss", "texture_size", "early_stop", "tv_weight",
               "nps_weight")


@dataclass(frozen=True)
class EOTItem:
    """One EOT attack (``physical-adv attack`` with ``options``), re-optimised against each model."""

    id: str
    label: str = ""
    options: tuple = ()  # sorted (name, value) pairs of AttackConfig fields in EOT_OPTIONS
    kind: ClassVar[str] = "eot"

    def __post_init__(self) -> None:
        _check_id(self.id)
        unknown = sorted(k for k, _ in self.options if k not in EOT_OPTIONS)
        if unknown:
            raise ValueError(f"unknown attack option(s) {', '.join(unknown)} (known: {', '.join(EOT_OPTIONS)})")
        self.attack_config("signs", 0, Path("."))  # AttackConfig validates the values

    @property
    def kwargs(self) -> dict:
        kw = dict(self.options)
        if "patch_position" in kw:
            kw["patch_position"] = tuple(kw["patch_position"])
        kw.setdefault("source", "sign:stop")
        return kw

    def attack_config(self, model: str, seed: int, out: Path, device: str = "auto"):
        """The :class:`~physical_adv.attack.runner.AttackConfig` of one run (raises ``ValueError``)."""
        from physical_adv.attack.runner import AttackConfig

        return AttackConfig(model=model, seed=seed, out=out, device=device, **self.kwargs)

    def quick(self) -> "EOTItem":
        cfg = self.attack_config("signs", 0, Path("."))
        caps = {"steps": min(cfg.steps, QUICK["eot_steps"]), "samples": min(cfg.samples, QUICK["eot_samples"]),
                "eval_samples": min(cfg.eval_samples, QUICK["eot_eval_samples"]),
                "texture_size": min(cfg.texture_size, QUICK["eot_texture_size"])}
        return replace(self, options=tuple(sorted({**dict(self.options), **caps}.items())), label=f"{self.title} [--quick]")

    @property
    def title(self) -> str:
        if self.label:
            return self.label
        kw = self.kwargs
        goal = f"→ {kw['target']}" if kw.get("target") else "untargeted"
        threat = f"sticker {kw.get('patch', 'mask')}" if kw.get("patch") or kw.get("mask") else f"L∞ ε = {kw.get('eps', 16):g}/255"
        return f"EOT {threat}, {kw['source']} {goal}"


KINDS = {cls.kind: cls for cls in (CleanItem, PGDItem, EOTItem)}


@dataclass(frozen=True)
class Suite:
    """The items of one suite file, in table order."""

    source: str
    description: str
    items: tuple

    def quick(self) -> "Suite":
        return replace(self, items=tuple(item.quick() for item in self.items))

    def to_json(self) -> list[dict]:
        return [item_json(item) for item in self.items]


def item_json(item) -> dict:
    """An item as the suite file would write it (what ``evaluate.json`` records and resumes by)."""
    if isinstance(item, EOTItem):
        return {"id": item.id, "kind": item.kind, "label": item.title, **dict(item.options)}
    return {"kind": item.kind, **asdict(item), "label": item.title}


def load_suite(name_or_path: str | Path = DEFAULT_SUITE) -> Suite:
    """A built-in suite by name (``default``) or a ``.toml`` file of the same format, validated whole.

    Raises:
        UserError: unreadable TOML, unknown keys or kinds (named), duplicate ids or bad values.
    """
    path, data = read_named_toml(name_or_path, SUITE_DIR, "attack suite")
    unknown = sorted(set(data) - {"description", "items"})
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)} (a suite has description and [[items]])")
    tables = data.get("items")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise UserError(f"{path}: a suite needs at least one [[items]] table")
    items, seen = [], set()
    for k, table in enumerate(tables, 1):
        table = dict(table)
        name = table.get("id", f"#{k}")
        kind = table.pop("kind", None)
        if kind not in KINDS:
            raise UserError(f"{path}: item {name!r} has unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
        if "id" not in table:
            raise UserError(f"{path}: item #{k} ({kind}) has no id")
        cls = KINDS[kind]
        try:
            if cls is EOTItem:
                options = tuple(sorted((key, v) for key, v in table.items() if key not in ("id", "label")))
                item = EOTItem(table["id"], table.get("label", ""), options)
            else:
                known = {f.name for f in fields(cls)}
                bad = sorted(set(table) - known)
                if bad:
                    raise ValueError(f"unknown key(s) {', '.join(bad)} for kind {kind} (known: {', '.join(sorted(known))})")
                item = cls(**table)
        except (TypeError, ValueError) as exc:
            raise UserError(f"{path}: item {name!r}: {exc}") from None
        if item.id in seen:
            raise UserError(f"{path}: two items have the id {item.id!r}")
        seen.add(item.id)
        items.append(item)
    return Suite(str(path), str(data.get("description", "")), tuple(items))


# ---------------------------------------------------------------- the command's config


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0,1,2"`` → ``(0, 1, 2)``; a user error for anything else."""
    try:
        seeds = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise UserError(f"--seeds must be comma-separated non-negative integers like 0,1,2, got {text!r}") from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds must be distinct non-negative integers, got {text!r}")
    return seeds


@dataclass(frozen=True)
class EvaluateConfig:
    """Options of ``physical-adv evaluate``; validated on construction."""

    models: tuple[str, ...]
    out: Path
    attacks: str = DEFAULT_SUITE
    runs: tuple[str, ...] = ()
    seeds: tuple[int, ...] = DEFAULT_SEEDS
    quick: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        if not self.models or any(not str(m).strip() for m in self.models):
            raise ValueError("give at least one --model SPEC (repeat --model to compare models; a,b is an ensemble)")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"a model is given twice: {', '.join(self.models)}")
        if not self.seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in self.seeds):
            raise ValueError(f"seeds must be non-negative integers, got {list(self.seeds)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {list(self.seeds)}")


# ---------------------------------------------------------------- models and runs


@dataclass
class Entrant:
    """One model under evaluation: its spec, the folder name of its runs, the loaded model and a
    fingerprint of its weights (so a resumed evaluation notices weights changed under a spec)."""

    spec: str
    slug: str
    model: torch.nn.Module
    fingerprint: str

    def to_json(self) -> dict:
        card = self.model.card
        return {"spec": self.spec, "slug": self.slug, "weights": card.weights, "input_size": card.input_size,
                "classes": len(card.class_names), "sha256": self.fingerprint,
                **({"members": card.extra["members"]} if "members" in card.extra else {})}


def slug(spec: str) -> str:
    """A folder name for a model spec (``models/signs-hardened`` → ``models-signs-hardened``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", spec).strip("-.") or "model"


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the model's parameter and buffer names and bytes."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_entrants(specs: tuple[str, ...], device: str) -> list[Entrant]:
    """Load every ``--model`` (an unknown spec is a :class:`UserError`) and name their run folders."""
    from physical_adv.models import load_model

    entrants = [Entrant(s, slug(s), m := load_model(s, device), weights_fingerprint(m)) for s in specs]
    slugs = [e.slug for e in entrants]
    if len(set(slugs)) != len(slugs):
        raise UserError(f"models {', '.join(specs)} would share a run folder name; give them distinct names")
    return entrants


@dataclass
class Run:
    """A finished attack run given by ``--runs``: its record, texture and the model it was made on."""

    path: Path
    record: dict
    texture: np.ndarray  # (S, S, 3) uint8, adversarial.png
    source_model: torch.nn.Module = field(repr=False, default=None)


def read_run(path: str | Path, device: str) -> Run:
    """Read an attack run directory for a transfer row (a :class:`UserError` when it is not one)."""
    from physical_adv.images import load_image
    from physical_adv.models import load_model

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--runs {path}: run directory not found")
    if not (path / "attack.json").is_file():
        raise UserError(f"--runs {path} is not an attack run directory (no attack.json)")
    record = read_json(path / "attack.json", "attack record")
    for key in ("model", "class_names", "true_class", "target_class", "eval_distribution", "seeds", "metrics"):
        if key not in record:
            raise UserError(f"{path / 'attack.json'} lacks {key!r}; is it from physical-adv attack?")
    if not (path / "adversarial.png").is_file():
        raise UserError(f"--runs {path} lacks adversarial.png")
    spec = record["model"]["spec"]
    try:
        source = load_model(spec, device)
    except UserError as exc:
        raise UserError(f"--runs {path} was made on model {spec!r}, which cannot be loaded here: {exc}") from None
    return Run(path, record, load_image(path / "adversarial.png"), source)


# ---------------------------------------------------------------- held-out scenes


def is_signs_family(model) -> bool:
    """Whether ``model`` answers the signs classes in the signs order (the held-out scenes' labels)."""
    from physical_adv.signs.designs import CLASS_NAMES

    return list(model.class_names) == list(CLASS_NAMES)


def heldout_scenes(n: int, scenes: str = "mixed", seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` scenes of the held-out stream that :func:`physical_adv.signs.train.evaluate` scores."""
    from physical_adv.signs.train import EVAL_SEED, heldout_scenes as stream

    return stream(n, scenes, EVAL_SEED if seed is None else seed)


def pgd_robust(model, images: torch.Tensor, labels: torch.Tensor, eps: float, alpha: float, steps: int, restarts: int,
               generator: torch.Generator, batch: int = 250, on_batch=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which images survive PGD with restarts (:func:`physical_adv.attack.whitebox.pgd`, batched).

    Args:
        model: logits for ``(N, 3, H, W)`` in [0, 1].
        images: ``(N, 3, H, W)`` in [0, 1]; labels: ``(N,)`` true classes.
        eps, alpha: L∞ budget and step in [0, 1] units; steps: per restart.
        restarts: random starts; an image is robust only if every one leaves it correct
            (later restarts attack only the images still standing).
        generator: the random starts' stream, on the model's device.
        on_batch: called after each (batch, restart).

    Returns:
        ``(clean_correct (N,) bool, robust (N,) bool)``.
    """
    from physical_adv.attack.whitebox import pgd

    device = generator.device
    clean_ok, robust = torch.zeros(len(labels), dtype=torch.bool), torch.zeros(len(labels), dtype=torch.bool)
    for start in range(0, len(labels), batch):
        x, y = images[start : start + batch].to(device), labels[start : start + batch].to(device)
        with torch.no_grad():
            ok = model(x).argmax(1) == y
        clean_ok[start : start + len(y)] = ok.cpu()
        for _ in range(restarts):
            idx = ok.nonzero().squeeze(1)
            if len(idx):
                adv = pgd(model, x[idx], y[idx], eps, alpha, steps, random_start=True, generator=generator)
                with torch.no_grad():
                    ok[idx] = model(adv).argmax(1) == y[idx]
            if on_batch is not None:
                on_batch()
        robust[start : start + len(y)] = ok.cpu()
    return clean_ok, robust


# ---------------------------------------------------------------- rows


def _rate(k: int, n: int) -> dict:
    return {"value": k / n, "ci95": [round(v, 4) for v in wilson_interval(k, n)], "ci95_method": "wilson", "n": n}


def not_applicable(item, entrant: Entrant, reason: str) -> dict:
    return {"item": item.id, "kind": item.kind, "label": item.title, "model": entrant.spec, "applies": False,
            "value": None, "ci95": None, "n": 0, "reason": reason}


def clean_row(item: CleanItem, entrant: Entrant) -> dict:
    """Clean accuracy by :func:`physical_adv.signs.train.evaluate` (n/a outside the signs family)."""
    from physical_adv.signs.train import EVAL_SEED, evaluate

    if not is_signs_family(entrant.model):
        return not_applicable(item, entrant, _NOT_SIGNS.format(spec=entrant.spec))
    r = evaluate(entrant.model, item.n, kind=None if item.scenes == "mixed" else item.scenes)
    k = int(round(r["accuracy"] * item.n))
    return {"item": item.id, "kind": item.kind, "label": item.title, "model": entrant.spec, "applies": True,
            **_rate(k, item.n), "better": "higher", "scene_seed": EVAL_SEED, "per_class": r["per_class"],
            "meaning": f"top-1 accuracy on {item.n} fresh held-out {item.scenes} scenes (seed {EVAL_SEED} of the "
                       "evaluation stream, never drawn in training)"}


_NOT_SIGNS = ("does not apply: {spec}'s classes are not the 14 signs classes in their order, and the held-out "
              "scenes are traffic signs")


def pgd_row(item: PGDItem, entrant: Entrant, show_progress: bool = True) -> dict:
    """Robust accuracy under PGD with restarts on the first ``n`` held-out scenes."""
    if not is_signs_family(entrant.model):
        return not_applicable(item, entrant, _NOT_SIGNS.format(spec=entrant.spec))
    images, labels = heldout_scenes(item.n, item.scenes)
    generator = torch.Generator(device=entrant.model.device).manual_seed(PGD_SEED)
    batch, t0 = 250, time.time()
    total = -(-item.n // batch) * item.restarts
    with make_progress(disable=not show_progress) as progress:
        task = progress.add_task(f"{item.id} {entrant.spec}", total=total, info="")

        done = [0]

        def advance() -> None:
            progress.update(task, advance=1)
            done[0] += 1
            if show_progress and not console.is_terminal:  # a log file gets a line per (batch, restart)
                console.print(f"  PGD batch×restart {done[0]}/{total} ({time.time() - t0:.0f} s)")

        clean_ok, robust = pgd_robust(entrant.model, images, labels, item.eps / 255, item.alpha_value / 255, item.steps,
                                      item.restarts, generator, batch, advance)
    k = int(robust.sum())
    return {"item": item.id, "kind": item.kind, "label": item.title, "model": entrant.spec, "applies": True,
            **_rate(k, item.n), "better": "higher", "clean_accuracy_same_scenes": float(clean_ok.float().mean()),
            "eps_255": item.eps, "alpha_255": round(item.alpha_value, 4), "steps": item.steps,
            "restarts": item.restarts, "pgd_seed": PGD_SEED,
            "meaning": f"robust accuracy: of {item.n} held-out {item.scenes} scenes, the fraction classified correctly "
                       f"clean and after each of {item.restarts} PGD-{item.steps} restarts (random start, untargeted "
                       f"L∞ ε = {item.eps:g}/255, α = {item.alpha_value:.3g}/255, digital: no print or camera)"}


def run_dir(out: Path, entrant: Entrant, item: EOTItem, seed: int) -> Path:
    return Path(out) / "runs" / entrant.slug / f"{item.id}-seed{seed}"


def _config_json(cfg) -> dict:
    """An AttackConfig as ``attack.json`` records it, less where it ran (device, out)."""
    plain = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    return {k: v for k, v in json.loads(json.dumps(plain)).items() if k not in ("device", "out")}


def eot_goal_reason(item: EOTItem, entrant: Entrant) -> str | None:
    """Why the attack cannot be aimed at this model (its classes lack the source's or target's class), or None."""
    from physical_adv.attack.runner import resolve_goal

    cfg = item.attack_config(entrant.spec, 0, Path("."))
    try:  # -1: an image source's true class is the clean prediction, found only when the run starts
        resolve_goal(cfg, list(entrant.model.class_names), entrant.spec, -1)
    except UserError as exc:
        return f"does not apply: {exc}"
    return None


def check_resumable(cfg, path: Path) -> None:
    """A finished run at ``path`` must have been made with ``cfg``'s options (else a :class:`UserError`)."""
    record = read_json(path / "attack.json", "attack record")
    have, want = {k: v for k, v in record.get("config", {}).items() if k not in ("device", "out")}, _config_json(cfg)
    differ = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
    if differ:
        raise UserError(f"{path} holds a run made with other options ({', '.join(differ)}); remove it or choose "
                        "another --out")


def eot_row(item: EOTItem, entrant: Entrant, seeds: tuple[int, ...], out: Path, device: str,
            show_progress: bool = True) -> dict:
    """The attack of ``item`` optimised against ``entrant`` once per seed (finished runs are read)."""
    from physical_adv.attack.runner import run_attack

    reason = eot_goal_reason(item, entrant)
    if reason is not None:
        return not_applicable(item, entrant, reason)
    per_seed = []
    for seed in seeds:
        path = run_dir(out, entrant, item, seed)
        reused = (path / "attack.json").is_file()
        if reused:
            record = read_json(path / "attack.json", "attack record")
        else:
            record = run_attack(item.attack_config(entrant.spec, seed, path, device), show_progress).record
        m = record["metrics"]
        n = m["eot_samples"]
        per_seed.append({"seed": seed, "value": m["eot_success"], "ci95": m["eot_success_ci95"], "n": n,
                         "clean_value": m["clean_eot_success"], "steps_run": m.get("steps_run"),
                         "wall_seconds": m.get("wall_seconds"), "run": str(path), "reused": reused})
        if show_progress:
            console.print(f"  seed {seed}: {m['eot_success']:.1%} of {n} held-out draws"
                          + (" (finished run read)" if reused else f" ({m.get('wall_seconds', 0):.0f} s)"))
    s = seed_summary([p["value"] for p in per_seed])
    one = len(per_seed) == 1
    ci95, method = (per_seed[0]["ci95"], "wilson (one seed)") if one else (s["t95"], "student-t over seeds")
    if not one and s["min"] == s["max"]:  # every seed agrees: what is left is the draws' sampling error
        hits, draws = sum(round(p["value"] * p["n"]) for p in per_seed), sum(p["n"] for p in per_seed)
        ci95, method = [round(v, 4) for v in wilson_interval(hits, draws)], "wilson over the pooled draws (every seed agrees)"
    goal = f"read as {record['target_class']}" if record["target_class"] else f"not read as {record['true_class']}"
    return {"item": item.id, "kind": item.kind, "label": item.title, "model": entrant.spec, "applies": True,
            "value": s["mean"], "ci95": ci95, "ci95_method": method, "n": per_seed[0]["n"],
            "min": s["min"], "max": s["max"], "seeds": list(seeds), "per_seed": per_seed, "better": "lower",
            "eval_distribution": record["eval_distribution"]["name"],
            "meaning": f"attack success re-optimised against this model: the fraction of {per_seed[0]['n']} held-out "
                       f"{record['eval_distribution']['name']} draws (never seen by the optimiser) {goal}; value = mean "
                       f"over {len(seeds)} optimisation seed(s), min/max over seeds, per_seed = each run's Wilson interval"}


def transfer_row(run: Run, entrant: Entrant, device: str) -> dict:
    """``run``'s texture scored on ``entrant`` over the run's own held-out draws (as ``--transfer-to``)."""
    from physical_adv.attack import eot
    from physical_adv.attack.runner import _texture_tensor
    from physical_adv.attack.transfer import evaluate_transfer, open_transfer_targets

    r = run.record
    label = f"transfer of {run.path} (made on {r['model']['spec']})"
    base = {"item": f"transfer:{run.path}", "kind": "transfer", "label": label, "model": entrant.spec, "run": str(run.path)}
    try:
        targets = open_transfer_targets((entrant.spec,), list(r["class_names"]), None, entrant.model.device)
    except UserError as exc:
        return {**base, "applies": False, "value": None, "ci95": None, "n": 0, "reason": f"does not apply: {exc}"}
    dist = eot.EOTDistribution(**r["eval_distribution"])
    adv = _texture_tensor(run.texture, run.source_model.device)
    n = int(r["metrics"]["eot_samples"])  # the run's own held-out draws (one over a deterministic distribution)
    t = evaluate_transfer(targets, run.source_model, adv, dist, n, int(r["seeds"]["heldout"]), r["true_class"],
                          r["target_class"])
    row = t["models"][0]
    goal = f"read as {r['target_class']}" if r["target_class"] else f"not read as {r['true_class']}"
    return {**base, "applies": True, "value": row["success"], "ci95": row["success_ci95"], "ci95_method": "wilson",
            "n": row["n"], "better": "lower", "views": t["views"], "source_success_png": t["source"]["success"],
            "meaning": f"the run's adversarial.png, unchanged, on {n} held-out {dist.name} draws (the run's held-out "
                       f"seed) {goal}; the same views as `attack --transfer-to`"}


# ---------------------------------------------------------------- the command


def _earlier_record(out: Path) -> dict | None:
    """The ``evaluate.json`` an earlier (maybe interrupted) run left in ``out``, or None; an
    unreadable one is ignored (its rows are recomputed)."""
    try:
        old = json.loads((out / "evaluate.json").read_text(encoding="utf-8"))
        return old if isinstance(old, dict) and old.get("kind") == "evaluate" else None
    except (OSError, ValueError):
        return None


def _reusable_rows(old: dict | None) -> dict:
    """Clean and PGD rows of an earlier record, keyed by (item definition, model spec, weights)."""
    try:
        prints = {m["spec"]: m["sha256"] for m in old["models"]}
        items = {i["id"]: i for i in old["suite"]["items"]}
        return {(json.dumps(items[r["item"]], sort_keys=True), r["model"], prints[r["model"]]): r
                for r in old["rows"] if r["kind"] in ("clean", "pgd") and r["item"] in items}
    except (KeyError, TypeError):
        return {}


def _check_same_weights(old: dict | None, entrants: list[Entrant], out: Path) -> None:
    """Finished runs in ``out`` were made on the weights its evaluate.json names: a model whose
    weights changed under the same spec would mix two models in one row."""
    try:
        prints = {m["spec"]: m["sha256"] for m in old["models"]}
    except (KeyError, TypeError):
        return
    for e in entrants:
        if prints.get(e.spec, e.fingerprint) != e.fingerprint:
            raise UserError(f"the weights of model {e.spec} are not those {out / 'evaluate.json'} was made with; "
                            "its finished runs would mix two models: choose another --out")


def plan(cfg: EvaluateConfig) -> tuple[Suite, list[Entrant], list[Run]]:
    """Everything checked before any work: the suite, the models, the runs, the output folder,
    and every attack configuration and finished run directory the evaluation will use."""
    from physical_adv.attack.runner import resolve_distributions
    from physical_adv.images import load_image

    suite = load_suite(cfg.attacks)
    if cfg.quick:
        suite = suite.quick()
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a folder for evaluate.json and the run directories")
    entrants = load_entrants(cfg.models, cfg.device)
    _check_same_weights(_earlier_record(out), entrants, out)
    runs = [read_run(p, cfg.device) for p in cfg.runs]
    for item in suite.items:
        if not isinstance(item, EOTItem):
            continue
        first = item.attack_config("signs", 0, Path("."))
        load_image(first.source)  # an unknown sign or missing image file fails now
        resolve_distributions(first)  # an unknown EOT preset too
        for e in entrants:
            for seed in cfg.seeds:
                path = run_dir(out, e, item, seed)
                if (path / "attack.json").is_file():
                    check_resumable(item.attack_config(e.spec, seed, path, cfg.device), path)
    return suite, entrants, runs


def run_evaluate(cfg: EvaluateConfig, show_progress: bool = True) -> dict:
    """Run the suite of ``cfg`` on every model and write ``OUT/evaluate.json`` (see module docs).

    Returns:
        The ``evaluate.json`` record.
    """
    started = time.time()
    suite, entrants, runs = plan(cfg)
    out = Path(cfg.out)
    previous = _reusable_rows(_earlier_record(out))
    record = {
        "schema": SCHEMA, "kind": "evaluate", "created": utc_now(), "complete": False,
        "config": {"models": list(cfg.models), "attacks": cfg.attacks, "runs": [str(r) for r in cfg.runs],
                   "seeds": list(cfg.seeds), "quick": cfg.quick, "device": cfg.device, "out": str(out)},
        "suite": {"source": suite.source, "description": suite.description, "items": suite.to_json()},
        "seeds": list(cfg.seeds),
        "models": [e.to_json() for e in entrants],
        "rows": [],
        "versions": software_versions(),
    }
    total = len(suite.items) * len(entrants) + len(runs) * len(entrants)
    done = 0
    for item in suite.items:
        for e in entrants:
            done += 1
            if show_progress:
                console.print(f"[{done}/{total}] {item.title} — {e.spec}")
            t0 = time.time()
            key = (json.dumps(item_json(item), sort_keys=True), e.spec, e.fingerprint)
            if item.kind in ("clean", "pgd") and key in previous:
                row = {**previous[key], "reused": True}
            elif isinstance(item, CleanItem):
                row = clean_row(item, e)
            elif isinstance(item, PGDItem):
                row = pgd_row(item, e, show_progress)
            else:
                row = eot_row(item, e, cfg.seeds, out, cfg.device, show_progress)
            row.setdefault("seconds", round(time.time() - t0, 2))
            record["rows"].append(row)
            if show_progress:
                console.print(f"  {format_cell(row)}  ({time.time() - t0:.0f} s)")
        atomic_write_json(out / "evaluate.json", record)  # a partial table after every item
    for run in runs:
        for e in entrants:
            done += 1
            if show_progress:
                console.print(f"[{done}/{total}] transfer of {run.path} — {e.spec}")
            t0 = time.time()
            row = transfer_row(run, e, cfg.device)
            row["seconds"] = round(time.time() - t0, 2)
            record["rows"].append(row)
        atomic_write_json(out / "evaluate.json", record)
    record.update(complete=True, wall_seconds=round(time.time() - started, 1))
    atomic_write_json(out / "evaluate.json", record)
    return record


# ---------------------------------------------------------------- the table


def format_cell(row: dict) -> str:
    """One table cell: ``97.5 % [96.7, 98.1]``; over seeds ``94.2 % (93.7–94.8, 3 seeds)``; ``n/a``."""
    if not row["applies"]:
        return "n/a"
    if row["kind"] == "eot" and len(row["per_seed"]) > 1:
        return f"{row['value']:.1%} ({row['min'] * 100:.1f}–{row['max'] * 100:.1f}, {len(row['per_seed'])} seeds)"
    lo, hi = row["ci95"] if row["ci95"] else (row["value"], row["value"])
    return f"{row['value']:.1%} [{lo * 100:.1f}, {hi * 100:.1f}]"


def print_table(record: dict, out_console=None) -> None:
    """The terminal table: one row per item, one column per model (rich)."""
    from rich.console import Console
    from rich.table import Table

    specs = [m["spec"] for m in record["models"]]
    table = Table(title=f"evaluate ({record['config']['out']})" + ("" if record.get("complete") else " — partial"))
    table.add_column("item")
    table.add_column("n", justify="right")
    for spec in specs:
        table.add_column(spec, justify="right")
    table.add_column("better")
    by_item: dict[str, dict] = {}
    for row in record["rows"]:
        by_item.setdefault(row["item"], {})[row["model"]] = row
    for item, cells in by_item.items():
        first = next(iter(cells.values()))
        n = next((c["n"] for c in cells.values() if c["applies"]), 0)
        better = next((c["better"] for c in cells.values() if c["applies"]), "")
        table.add_row(first["label"], str(n) if n else "—", *[format_cell(cells[s]) if s in cells else "" for s in specs],
                      {"higher": "↑", "lower": "↓"}.get(better, ""))
    if out_console is None:  # wide enough for one line per item when piped to a file (rich's default is 80)
        out_console = Console()
        if not out_console.is_terminal:
            labels = max((len(r["label"]) for r in record["rows"]), default=10)
            cells = max((len(format_cell(r)) for r in record["rows"]), default=10)
            out_console = Console(width=max(out_console.width, labels + 20 + (cells + 3) * len(specs)))
    out_console.print(table)
    for note in sorted({r["reason"] for r in record["rows"] if not r["applies"]}):
        out_console.print(f"n/a: {note}")
    out_console.print("Intervals: 95 % Wilson over the row's n; EOT rows over seeds give mean (min–max) "
                                     "of held-out success, each seed's interval in evaluate.json. ↑ / ↓: which way is "
                                     "more robust.")
