"""What EOT costs on top of the model, and how that compares with ART's and torchattacks' EOT.

Usage: python benchmarks/eot_overhead.py [--models signs,resnet18] [--samples 32] [--repeats 15]
                                         [--device cpu] [--no-peers] [--default-malloc] [--json]
                                         [--textures 1,8,32] [--breakdown K]

For each model, in one process and interleaved (a, b, a, b, …), with medians of repeats:
  (a) one EOT attack step: sample 32 print-camera transformations, render the 512 px texture
      to the model's input, forward, backward to the texture, signed step and projection;
  (b) the model's bare forward+backward on an already-transformed batch of the same size.
It prints (a)/(b); glibc's malloc is tuned as the command line tunes it
(``physical_adv.memory.keep_freed_memory``) unless ``--default-malloc``. Then it runs the
same EOT work — same model, 32 transformation samples per step, comparable transforms — with torchattacks' EOTPGD (kornia augmentations inside the
model's forward, its loop of eot_iter passes) and with ART's PyTorch EoT preprocessing
(rotation ×32, brightness, contrast, noise) through ``loss_gradient``, and prints our
speed-up over each as ``peers`` — for ART also against our renderer restricted to ART's
transform set (``art_same_transforms``) — and, as ``peer_ceilings``, each peer's step over the
bare pass: the most any EOT implementation could beat that peer by, since every EOT step
contains the bare pass. ``resnet18`` (or any torchvision classifier by name, e.g. ``resnet50``)
is torchvision's architecture with random weights at 224 px (weights do not change the timing).

``--textures 1,8,32`` adds the batched step of ``physical-adv sweep``: K ``sign:stop`` jobs
(seeds 0…K−1, untargeted L∞ 16/255, early stop off) prepared by the library
(:func:`physical_adv.sweep.batched.prepare`) and stepped by its own loop
(:func:`~physical_adv.sweep.batched.optimise_batch`, stopped after one step by its callback),
so the figure is the code that ships: K samplings and renders, one model pass on the K·M
views, the per-texture objectives, one backward, K signed steps and projections. It is
interleaved with the bare forward+backward on an already-rendered batch of K·M views, and
for the largest K (``--breakdown K`` picks another, 0 = none) the shipped step is split by
timers wrapped around its parts: sampling, render forward, model forward, model backward,
render backward, signed step and projection, and the rest (objectives, per-texture
statistics, best iterate, concatenation); one more step under torch.profiler names the ops
that took most of it (``top_ops``).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from physical_adv.attack import eot
from physical_adv.attack.objectives import OBJECTIVES, cross_entropy_objective
from physical_adv.attack.threat import LinfBall
from physical_adv.images import load_image, to_batch
from physical_adv.memory import keep_freed_memory
from physical_adv.models import load_model
from physical_adv.models.base import Classifier, ModelCard
from physical_adv.sweep.batched import optimise_batch, prepare


def build_model(name: str, device: str) -> Classifier:
    if name == "signs":
        return load_model("signs", device)
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    card = ModelCard(name, tuple(str(i) for i in range(1000)), 224, "random")
    model = Classifier(net, card, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def sync(device) -> None:
    """Wait for the device to finish its queued work (a no-op on a CPU), so timers read what it did."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# The transforms ART's PyTorch EoT offers, as one of our distributions: the like-for-like
# comparison with ART (our default distribution does much more: perspective, printer colour, blur, JPEG).
ART_LIKE = eot.EOTDistribution(name="art-like", rotation=8.0, brightness=(-0.06, 0.06), contrast=(0.7, 1.15), noise=(0.02, 0.02))


def bare_pass(model, batch: torch.Tensor, labels: torch.Tensor) -> None:
    """The model's own forward+backward on already-rendered views: what every EOT step contains."""
    b = batch.clone().requires_grad_(True)
    torch.autograd.grad(cross_entropy_objective(model(b), labels, False), b)


def interleaved(fns: list, repeats: int, device, warmup: int = 2) -> list[float]:
    """Median seconds of each of ``fns``, called in turn (a, b, …, a, b, …) ``repeats`` times after ``warmup`` rounds."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, store in zip(fns, times):
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            store.append(time.perf_counter() - t)
    return [statistics.median(store) for store in times]


def time_ours(model, samples: int, repeats: int, device, dist: eot.EOTDistribution | None = None) -> dict:
    dist = dist or eot.load_distribution("print-camera")
    g = torch.Generator(device=device).manual_seed(0)
    texture = to_batch(load_image("sign:stop")).to(device)
    threat = LinfBall(16 / 255)
    label = torch.tensor([0], device=device)
    x = texture.clone()

    def eot_step():
        nonlocal x
        x.requires_grad_(True)
        params = eot.sample(dist, samples, texture.shape[-1], model.input_size, g, device)
        logits = model(eot.render(x, params))
        grad = torch.autograd.grad(cross_entropy_objective(logits, label.expand(samples), False), x)[0]
        x = threat.project(threat.step(x.detach(), grad, 1 / 255), texture).detach()

    with torch.no_grad():
        batch = eot.render(texture, eot.sample(dist, samples, texture.shape[-1], model.input_size, g, device))

    a, b = interleaved([eot_step, lambda: bare_pass(model, batch, label.expand(samples))], repeats, device)
    return {"eot_step_ms": round(a * 1000, 2), "bare_ms": round(b * 1000, 2), "ratio": round(a / b, 3)}


class Jobs(NamedTuple):
    """Prepared sweep jobs that share a model and a distribution."""

    textures: list  # each job's state (physical_adv.sweep.batched.prepare)
    goals: list  # each job's true and target class (physical_adv.attack.runner.Goal)
    dist: eot.EOTDistribution  # the distribution they optimise over
    views: int  # transformation samples per texture per step
    objective: Callable  # (logits, labels, targeted) → scalar to maximise


def batched_jobs(model, k: int, samples: int, steps: int = 10**9) -> Jobs:
    """``k`` sweep jobs on ``sign:stop`` (seeds 0…k−1, untargeted L∞ 16/255, early stop off) prepared
    by the library as ``physical-adv sweep`` prepares them.

    Args:
        model: the shared model (its device is the jobs' device).
        k: number of jobs.
        samples: EOT samples per texture per step.
        steps: each job's step budget (the default never ends: stop it with :func:`run_steps`).
    """
    from physical_adv.attack.runner import AttackConfig, views_per_step

    # random-weight torchvision models have no "stop" class: call their first class the true one
    true_class = None if "stop" in model.class_names else model.class_names[0]
    cfgs = [AttackConfig(source="sign:stop", out=Path("unused"), model=model.spec, true_class=true_class, seed=seed,
                         samples=samples, steps=steps, early_stop=False, device=str(model.device)) for seed in range(k)]
    prepared = [prepare(cfg, model, model.device) for cfg in cfgs]
    dist = prepared[0][1]["dists"].optimise
    return Jobs([tex for tex, _ in prepared], [extra["goal"] for _, extra in prepared], dist,
                views_per_step(cfgs[0], dist), OBJECTIVES[cfgs[0].loss])


class _Enough(Exception):
    """Raised from :func:`optimise_batch`'s callback to end the loop after the steps asked for."""


def run_steps(jobs: Jobs, model, steps: int) -> None:
    """``steps`` steps of the library's batched loop (:func:`optimise_batch`) on ``jobs``, which go
    on from where they are (their step budget is not touched: the loop is stopped from its callback)."""

    def stop(step: int, active: int) -> None:
        if step >= steps:
            raise _Enough

    try:
        optimise_batch(jobs.textures, model, jobs.dist, jobs.views, jobs.objective, stop)
    except _Enough:
        pass


def rendered_views(model, jobs: Jobs) -> tuple[torch.Tensor, torch.Tensor]:
    """An already-rendered batch of ``jobs.views`` draws of each job's clean texture ``(K·views, 3, h, w)``
    and its labels ``(K·views,)``: the bare pass's input, the size of a batched step's."""
    g = torch.Generator(device=model.device).manual_seed(0)
    size = jobs.textures[0].clean.shape[-1]
    with torch.no_grad():
        batch = torch.cat([eot.render(t.clean, eot.sample(jobs.dist, jobs.views, size, model.input_size, g, model.device))
                           for t in jobs.textures])
    return batch, torch.cat([t.label.expand(jobs.views) for t in jobs.textures])


def time_batched(model, k: int, samples: int, repeats: int, device) -> dict:
    """One step of the batched loop with ``k`` textures, interleaved with the bare pass on ``k·samples`` views."""
    jobs = batched_jobs(model, k, samples)
    batch, labels = rendered_views(model, jobs)
    a, b = interleaved([lambda: run_steps(jobs, model, 1), lambda: bare_pass(model, batch, labels)], repeats, device)
    return {"textures": k, "views": len(batch), "step_ms": round(a * 1000, 2), "bare_ms": round(b * 1000, 2),
            "ratio": round(a / b, 3), "step_ms_per_texture": round(a * 1000 / k, 2)}


@contextlib.contextmanager
def timed_parts(model, threat_type: type, device):
    """Timers around the parts of a batched step, for as long as the context lasts: ``eot.sample``,
    ``eot.render``, the model's forward (hooks), ``torch.autograd.grad`` split at the moment the
    gradient reaches the model's input (a full backward hook) into model and render backward, and
    the threat model's ``step`` and ``project``. Yields the dict of seconds that they add to."""
    acc: dict[str, float] = collections.defaultdict(float)
    marks: dict[str, float] = {}

    def clock() -> float:
        sync(device)
        return time.perf_counter()

    def timed(name: str, fn):
        def wrapper(*args, **kwargs):
            t = clock()
            out = fn(*args, **kwargs)
            acc[name] += clock() - t
            return out
        return wrapper

    orig_grad = torch.autograd.grad

    def grad(*args, **kwargs):
        t = clock()
        out = orig_grad(*args, **kwargs)
        end = clock()
        reached = marks.pop("input_grad", t)
        acc["model backward"] += reached - t
        acc["render backward"] += end - reached
        return out

    patches = [(eot, "sample", timed("sampling", eot.sample)), (eot, "render", timed("render forward", eot.render)),
               (torch.autograd, "grad", grad),
               (threat_type, "step", timed("signed step + projection", threat_type.step)),
               (threat_type, "project", timed("signed step + projection", threat_type.project))]
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    def forward_starts(*_) -> None:
        marks["forward"] = clock()

    def forward_ends(*_) -> None:
        acc["model forward"] += clock() - marks["forward"]

    def input_grad_reached(*_) -> None:
        marks["input_grad"] = clock()

    hooks = [model.register_forward_pre_hook(forward_starts), model.register_forward_hook(forward_ends),
             model.register_full_backward_hook(input_grad_reached)]
    try:
        for owner, name, fn in patches:
            setattr(owner, name, fn)
        yield acc
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)
        for h in hooks:
            h.remove()


def batched_breakdown(model, k: int, samples: int, steps: int, device) -> dict:
    """Where a batched step of ``k`` textures spends its time: median ms per part over ``steps``
    timed steps of the shipped loop, the rest (objectives, per-texture statistics, best iterate,
    concatenation) by difference."""
    jobs = batched_jobs(model, k, samples)
    run_steps(jobs, model, 2)  # warm-up
    per_step: list[dict[str, float]] = []
    with timed_parts(model, type(jobs.textures[0].threat), device) as acc:
        for _ in range(steps):
            acc.clear()
            sync(device)
            t = time.perf_counter()
            run_steps(jobs, model, 1)
            sync(device)
            total = time.perf_counter() - t
            per_step.append({**acc, "rest": total - sum(acc.values()), "step": total})
    return {"ms": {part: round(statistics.median(s[part] for s in per_step) * 1000, 2) for part in per_step[0]},
            "top_ops": profiled_ops(jobs, model, device)}


def profiled_ops(jobs: Jobs, model, device, top: int = 12) -> list[dict]:
    """The ops that took most of one batched step (its forward and backward), by torch.profiler:
    self time in ms (device time on CUDA) and calls, largest first."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run_steps(jobs, model, 1)
        sync(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:top]
    return [{"op": e.key, "self_ms": round(getattr(e, key) / 1000, 2), "calls": e.count} for e in events]


def _kornia_pipeline(size: int):
    import kornia.augmentation as K

    return K.AugmentationSequential(
        K.RandomPerspective(0.2, p=1.0),
        K.RandomAffine(degrees=8, translate=(0.05, 0.05), scale=(0.85, 1.12), p=1.0),
        K.ColorJiggle(0.1, 0.2, 0.3, 0.0, p=1.0),
        K.RandomGaussianBlur((5, 5), (0.1, 1.0), p=1.0),
        K.RandomGaussianNoise(std=0.02, p=1.0),
        K.RandomJPEG(jpeg_quality=(35.0, 95.0), p=0.7),
    )


def time_torchattacks(model, samples: int, repeats: int, device) -> float | None:
    try:
        import torchattacks
    except ImportError:
        return None
    aug = _kornia_pipeline(model.input_size)

    class RandomlyTransformed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(aug(x))

    wrapped = RandomlyTransformed().eval()
    atk = torchattacks.EOTPGD(wrapped, eps=16 / 255, alpha=2 / 255, steps=1, eot_iter=samples, random_start=False)
    x = to_batch(load_image("sign:stop"), model.input_size).to(device)
    y = torch.tensor([0], device=device)
    atk(x, y)
    times = []
    for _ in range(max(3, repeats // 3)):
        sync(device)
        t = time.perf_counter()
        atk(x, y)
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_art(model, samples: int, repeats: int, device) -> float | None:
    try:
        from art.estimators.classification import PyTorchClassifier
        from art.preprocessing.expectation_over_transformation import (
            EoTBrightnessPyTorch,
            EoTContrastPyTorch,
            EoTGaussianNoisePyTorch,
            EoTImageRotationPyTorch,
        )
    except ImportError:
        return None
    size = model.input_size
    clip = (0.0, 1.0)
    defences = [
        EoTImageRotationPyTorch(nb_samples=samples, angles=8.0, clip_values=clip),
        EoTBrightnessPyTorch(nb_samples=1, delta=0.06, clip_values=clip),
        EoTContrastPyTorch(nb_samples=1, contrast_factor=(0.7, 1.15), clip_values=clip),
        EoTGaussianNoisePyTorch(nb_samples=1, std=0.02, clip_values=clip),
    ]
    class ChannelsLast(torch.nn.Module):  # ART's EoT transforms work on NHWC images
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return self.model(x.permute(0, 3, 1, 2))

    clf = PyTorchClassifier(model=ChannelsLast(), loss=torch.nn.CrossEntropyLoss(), input_shape=(size, size, 3),
                            nb_classes=len(model.class_names), clip_values=clip, preprocessing_defences=defences,
                            channels_first=False, device_type="gpu" if torch.device(device).type == "cuda" else "cpu")
    x = to_batch(load_image("sign:stop"), size).permute(0, 2, 3, 1).contiguous().numpy()
    y = torch.nn.functional.one_hot(torch.tensor([0]), len(model.class_names)).numpy()
    clf.loss_gradient(x, y)
    times = []
    for _ in range(max(3, repeats // 3)):
        t = time.perf_counter()
        clf.loss_gradient(x, y)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def texture_counts(text: str) -> list[int]:
    """``--textures 1,8,32`` → ``[1, 8, 32]`` (argparse type: each a positive whole number)."""
    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers separated by commas, got {text!r}")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="signs,resnet18")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--default-malloc", action="store_true", help="Leave glibc's malloc as it is (the CLI tunes it).")
    ap.add_argument("--textures", type=texture_counts, default=[],
                    help="Also time the batched step of sweep with K textures, for each K given (e.g. 1,8,32).")
    ap.add_argument("--breakdown", type=int, default=None,
                    help="Split the batched step of K textures into its parts (default: the largest --textures; 0 = no).")
    args = ap.parse_args()
    tuned = False if args.default_malloc else keep_freed_memory()
    results = {"malloc_tuned": tuned, "device": args.device, "threads": torch.get_num_threads(), "samples": args.samples,
               "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads", "models": {}}
    for name in args.models.split(","):
        model = build_model(name, args.device)
        repeats = args.repeats if name == "signs" or args.device != "cpu" else max(3, args.repeats // 3)
        r = time_ours(model, args.samples, repeats, args.device)
        if not args.no_peers:
            ours_s = r["eot_step_ms"] / 1000
            peers = {}
            for peer, fn in (("art", time_art), ("torchattacks", time_torchattacks)):
                t = fn(model, args.samples, repeats, args.device)
                peers[peer] = None if t is None else round(t / ours_s, 2)
                r[f"{peer}_step_ms"] = None if t is None else round(t * 1000, 1)
            r["peers"] = peers
            # No EOT step can be cheaper than the bare pass it contains, so peer step / bare
            # pass is the largest speed-up over that peer that any implementation could show.
            r["peer_ceilings"] = {peer: None if r[f"{peer}_step_ms"] is None else round(r[f"{peer}_step_ms"] / r["bare_ms"], 2)
                                  for peer in peers}
            if peers.get("art") is not None:  # like for like: our renderer with ART's transform set
                like = time_ours(model, args.samples, repeats, args.device, ART_LIKE)
                r["art_like_eot_step_ms"] = like["eot_step_ms"]
                r["peers"]["art_same_transforms"] = round(r["art_step_ms"] / like["eot_step_ms"], 2)
        if args.textures:
            r["batched"] = {str(k): time_batched(model, k, args.samples, repeats, args.device) for k in args.textures}
        split = max(args.textures, default=0) if args.breakdown is None else args.breakdown
        if split:
            r["breakdown"] = {"textures": split, **batched_breakdown(model, split, args.samples, max(3, repeats // 3),
                                                                     args.device)}
        results["models"][name] = r
        if not args.json:
            line = f"{name}: EOT step {r['eot_step_ms']} ms, bare forward+backward {r['bare_ms']} ms, ratio {r['ratio']}"
            if "peers" in r:
                line += f"; speed-up over peers {r['peers']} (ceilings: peer step / bare pass {r['peer_ceilings']})"
            print(line, flush=True)
            for k, b in r.get("batched", {}).items():
                print(f"{name}, {k} textures × {args.samples} samples: batched step {b['step_ms']} ms, bare forward+backward "
                      f"on {b['views']} views {b['bare_ms']} ms, ratio {b['ratio']}", flush=True)
            if "breakdown" in r:
                parts = ", ".join(f"{part} {ms}" for part, ms in r["breakdown"]["ms"].items())
                print(f"{name}, {split} textures, ms per step (timers on): {parts}", flush=True)
                ops = ", ".join(f"{op['op']} {op['self_ms']} ({op['calls']}×)" for op in r["breakdown"]["top_ops"])
                print(f"{name}, {split} textures, most self time in one step (torch.profiler): {ops}", flush=True)
    first = next(iter(results["models"].values()))
    results["ratio"] = first["ratio"]
    results["peers"] = first.get("peers")
    if "batched" in first:
        results["batched_ratio"] = {k: b["ratio"] for k, b in first["batched"].items()}
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
