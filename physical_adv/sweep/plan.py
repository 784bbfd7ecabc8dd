"""A study plan (``plan.toml``): attacks as a product of axes plus single jobs.

Keys are ``attack``'s own option names (its config's fields, or the command line's spelling:
``tv``, ``nps``, ``di``, ``patch_pos``, ``no_early_stop``). In ``[grid]`` a list is an axis and
the plan is the product of the axes (a scalar is fixed for every job); each ``[[job]]`` table
adds one job, taking ``[grid]``'s scalars as defaults. ``source`` also takes a folder (every
image in it) or ``sign:*`` (every built-in sign)::

    [grid]
    source = ["sign:stop", "sign:yield"]
    seed = [0, 1]
    steps = 50

    [[job]]
    source = "sign:stop"
    target = "speed limit 80"
    patch = "square"

is five jobs. The whole plan is validated before anything runs (:func:`load_plan`): an unknown
key, a bad value, a missing file or an unknown class is one error naming it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

from physical_adv.errors import UserError

ALIASES = {"tv": "tv_weight", "nps": "nps_weight", "di": "di_prob", "patch_pos": "patch_position"}
NOT_IN_PLAN = {"out"}  # the sweep places every run itself
PLAN_TABLES = {"grid", "job", "study"}


@dataclass(frozen=True)
class Job:
    """One attack of a study: its options (``AttackConfig`` field names, plan order kept) and id."""

    index: int
    options: dict
    id: str

    def config(self, out: Path):
        from physical_adv.attack.runner import AttackConfig

        return AttackConfig(out=out, **self.options)


@dataclass(frozen=True)
class Plan:
    path: Path
    jobs: tuple[Job, ...]
    data: dict  # the plan as read


def _fields() -> dict[str, dataclasses.Field]:
    from physical_adv.attack.runner import AttackConfig

    return {f.name: f for f in dataclasses.fields(AttackConfig)}


def _key(name: str, where: str) -> str:
    fields = _fields()
    if name == "no_early_stop":
        return name
    key = ALIASES.get(name, name)
    if key in NOT_IN_PLAN:
        raise UserError(f"plan {where}: {name!r} is not a plan key (the sweep puts every run under --out itself)")
    if key not in fields:
        import difflib

        near = difflib.get_close_matches(key, [*fields, *ALIASES], n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise UserError(f"plan {where}: unknown key {name!r}{hint}; keys are attack's option names")
    return key


def _normalise(raw: dict, where: str) -> dict:
    """Plan keys → ``AttackConfig`` field names and types."""
    out = {}
    for name, value in raw.items():
        key = _key(name, where)
        if key == "no_early_stop":
            key, value = "early_stop", not value
        if key == "patch_position" and isinstance(value, str):
            try:
                value = tuple(float(v) for v in value.split(","))
            except ValueError:
                raise UserError(f"plan {where}: patch_pos must be X,Y fractions like \"0.5,0.7\", got {value!r}") from None
        if key in ("patch_position", "transfer_to") and isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return out


def _sources(value: str, base: Path, where: str) -> list[str]:
    """``source`` expanded: ``sign:*`` → every built-in sign, a folder → its images."""
    from physical_adv.images import IMAGE_SUFFIXES
    from physical_adv.signs.designs import CLASS_NAMES

    if not isinstance(value, str):
        raise UserError(f"plan {where}: source must be text (an image, a folder, sign:NAME or sign:*), got {value!r}")
    if value == "sign:*":
        return [f"sign:{name}" for name in CLASS_NAMES]
    if value.startswith("sign:"):
        from physical_adv.signs.designs import class_index

        try:
            class_index(value[5:])
        except UserError as exc:
            raise UserError(f"plan {where}: {exc}") from None
        return [value]
    path = Path(value)
    path = path if path.is_absolute() else base / path
    if path.is_dir():
        images = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise UserError(f"plan {where}: source folder {value} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return images
    if not path.is_file():
        raise UserError(f"plan {where}: source not found: {value}")
    return [str(path)]


def _files(options: dict, base: Path) -> dict:
    """Relative file options resolved against the plan's folder (so a plan runs from anywhere)."""
    out = dict(options)
    for key in ("mask", "palette", "classes", "start"):
        if isinstance(out.get(key), str) and not out[key].startswith("sign:"):
            p = Path(out[key])
            out[key] = str(p if p.is_absolute() else base / p)
    for key in ("eot", "eval_eot"):
        v = out.get(key)
        if isinstance(v, str) and v.split("+")[0].endswith(".toml"):
            head, *stages = v.split("+")
            p = Path(head)
            out[key] = "+".join([str(p if p.is_absolute() else base / p), *stages])
    if isinstance(out.get("model"), str) and (base / out["model"]).exists() and not Path(out["model"]).is_absolute():
        out["model"] = str(base / out["model"])
    return out


def _cli_defaults(options: dict, where: str) -> dict:
    """The defaults ``attack``'s command line derives from other options: ``--model`` is the
    oracle's spec for a model oracle, and ``--method label-only`` answers ``label`` by default."""
    out = dict(options)
    oracle = out.get("oracle")
    if isinstance(oracle, str) and "model" not in out:
        if oracle.startswith(("http://", "https://")):
            raise UserError(f"plan {where}: a URL oracle needs model (the local model of the held-out check)")
        out["model"] = oracle
    if out.get("method") == "label-only" and "mode" not in out:
        out["mode"] = "label"
    return out


def job_id(options: dict) -> str:
    """A readable, stable id: source, goal and seed, plus a hash of every option."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:10]
    source = Path(str(options["source"]).replace("sign:", "")).stem.lower()
    goal = str(options.get("target") or "untargeted").lower()
    slug = "".join(c if c.isalnum() else "-" for c in f"{source}-{goal}").strip("-")[:40]
    return f"{slug}-s{options.get('seed', 0)}-{digest}"


def expand(data: dict, base: Path) -> list[dict]:
    """The plan's jobs as option dicts (``[grid]``'s product in order, then each ``[[job]]``)."""
    unknown = set(data) - PLAN_TABLES
    if unknown:
        raise UserError(f"plan: unknown table {sorted(unknown)[0]!r}; a plan has [grid], [[job]] and [study]")
    grid = data.get("grid", {})
    if not isinstance(grid, dict):
        raise UserError("plan: [grid] must be a table")
    singles = data.get("job", [])
    if not isinstance(singles, list) or not all(isinstance(j, dict) for j in singles):
        raise UserError("plan: job must be an array of tables ([[job]])")
    grid = _normalise(grid, "[grid]")
    axes = {k: v for k, v in grid.items() if isinstance(v, list) and k not in ("transfer_to",)}
    fixed = {k: v for k, v in grid.items() if k not in axes}
    for k, v in axes.items():
        if not v:
            raise UserError(f"plan [grid]: axis {k!r} is an empty list")
    combos: list[dict] = []
    if axes or (fixed and not singles):
        for values in itertools.product(*axes.values()):
            combos.append({**fixed, **dict(zip(axes, values))})
    for i, job in enumerate(singles, 1):
        opts = _normalise(job, f"[[job]] {i}")
        lists = [k for k, v in opts.items() if isinstance(v, list) and k != "transfer_to"]
        if lists:
            raise UserError(f"plan [[job]] {i}: {lists[0]!r} is a list; axes belong in [grid]")
        combos.append({**fixed, **opts})
    jobs = []
    for n, combo in enumerate(combos):
        where = f"job {n + 1}"
        if "source" not in combo:
            raise UserError(f"plan {where}: no source (give source in [grid] or in the [[job]])")
        for source in _sources(combo["source"], base, where):
            jobs.append(_files(_cli_defaults({**combo, "source": source}, where), base))
    if not jobs:
        raise UserError("plan: no jobs ([grid] with source, or [[job]] tables)")
    return jobs


def _check(options: dict, where: str) -> None:
    """Construct the job's config (its own validation), then check files, distributions and classes."""
    from physical_adv.attack import eot
    from physical_adv.attack.runner import AttackConfig

    try:
        cfg = AttackConfig(out=Path("unused"), **options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"plan {where}: {exc}") from None
    for key in ("mask", "palette", "classes"):
        value = getattr(cfg, key)
        if value is not None and not Path(value).is_file():
            raise UserError(f"plan {where}: {key} file not found: {value}")
    for name in {cfg.eot, cfg.eval_eot} - {None}:
        try:
            eot.load_distribution(name)
        except UserError as exc:
            raise UserError(f"plan {where}: {exc}") from None
        except ValueError as exc:
            raise UserError(f"plan {where}: distribution {name}: {exc}") from None


def _check_classes(jobs: list[Job]) -> None:
    """Every target and true class is one of its model's classes (each model loaded once)."""
    from physical_adv.classes import class_index
    from physical_adv.models import load_model

    names: dict[tuple, list[str]] = {}
    for job in jobs:
        o = job.options
        wanted = [(k, o[k]) for k in ("target", "true_class") if o.get(k)]
        if not wanted:
            continue
        spec = (o.get("oracle") if o.get("oracle") and not str(o["oracle"]).startswith("http") else o.get("model", "signs"),
                o.get("classes"))
        if spec not in names:
            try:
                names[spec] = list(load_model(spec[0], "cpu", classes=spec[1]).class_names)
            except UserError as exc:
                raise UserError(f"plan job {job.index + 1} ({job.id}): {exc}") from None
        for key, value in wanted:
            try:
                class_index(names[spec], value, "target" if key == "target" else "true", f"model {spec[0]}")
            except UserError as exc:
                raise UserError(f"plan job {job.index + 1} ({job.id}): {exc}") from None


def load_plan(path: str | Path) -> Plan:
    """Read, expand and validate ``plan.toml`` (one :class:`UserError` for the first problem)."""
    from physical_adv.artifacts import read_toml

    path = Path(path).resolve()  # every file of the plan resolved: workers on other nodes see the same paths
    data = read_toml(path, "plan")
    options = expand(data, path.parent)
    jobs, seen = [], {}
    for i, opts in enumerate(options):
        _check(opts, f"job {i + 1}")
        jid = job_id(opts)
        if jid in seen:
            raise UserError(f"plan: jobs {seen[jid] + 1} and {i + 1} are the same attack (same options); drop one")
        seen[jid] = i
        jobs.append(Job(i, opts, jid))
    _check_classes(jobs)
    return Plan(path, tuple(jobs), data)
