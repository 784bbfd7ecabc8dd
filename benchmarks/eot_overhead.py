"""What EOT costs on top of the model, and how that compares with ART's and torchattacks' EOT.

Usage: python benchmarks/eot_overhead.py [--models signs,resnet18] [--samples 32] [--repeats 15]
                                         [--device cpu] [--no-peers] [--default-malloc] [--json]

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
contains the bare pass. ``resnet18`` is torchvision's architecture with random
weights at 224 px (weights do not change the timing).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from physical_adv.attack import eot
from physical_adv.attack.objectives import cross_entropy_objective
from physical_adv.attack.threat import LinfBall
from physical_adv.images import load_image, to_batch
from physical_adv.memory import keep_freed_memory
from physical_adv.models import load_model
from physical_adv.models.base import Classifier, ModelCard


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


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# The transforms ART's PyTorch EoT offers, as one of our distributions: the like-for-like
# comparison with ART (our default distribution does much more: perspective, printer colour, blur, JPEG).
ART_LIKE = eot.EOTDistribution(name="art-like", rotation=8.0, brightness=(-0.06, 0.06), contrast=(0.7, 1.15), noise=(0.02, 0.02))


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

    def bare_step():
        b = batch.clone().requires_grad_(True)
        logits = model(b)
        torch.autograd.grad(cross_entropy_objective(logits, label.expand(samples), False), b)

    for _ in range(2):
        eot_step(), bare_step()
    ta, tb = [], []
    for _ in range(repeats):
        for fn, store in ((eot_step, ta), (bare_step, tb)):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            store.append(time.perf_counter() - t)
    a, b = statistics.median(ta), statistics.median(tb)
    return {"eot_step_ms": round(a * 1000, 2), "bare_ms": round(b * 1000, 2), "ratio": round(a / b, 3)}


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
        _sync(device)
        t = time.perf_counter()
        atk(x, y)
        _sync(device)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="signs,resnet18")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--default-malloc", action="store_true", help="Leave glibc's malloc as it is (the CLI tunes it).")
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
        results["models"][name] = r
        if not args.json:
            line = f"{name}: EOT step {r['eot_step_ms']} ms, bare forward+backward {r['bare_ms']} ms, ratio {r['ratio']}"
            if "peers" in r:
                line += f"; speed-up over peers {r['peers']} (ceilings: peer step / bare pass {r['peer_ceilings']})"
            print(line, flush=True)
    first = next(iter(results["models"].values()))
    results["ratio"] = first["ratio"]
    results["peers"] = first.get("peers")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
