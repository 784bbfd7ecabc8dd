"""Why black-box EOT L∞ fails on `signs` (issue 11): how well one NES estimate points along the
expected (white-box) gradient.

At the clean stop texture (256), untargeted, print-camera: the 'true' expected gradient of the objective
(CE = -log p(stop), margin = best-other - stop logit capped at 5) averaged over N_TRUE autograd draws,
versus (a) single NES estimates (50 pairs, sigma 0.05, momentum 0 = the loop's first estimate),
(b) the mean of 10 NES estimates, (c) single 32-draw white-box step gradients. Cosines of the raw vectors
and of their signs (the L-inf step uses the sign). Also the grid limit: E[NES] = B B^T g (B = bilinear
upsampling of the grid basis), its cosine with g. NES and the 'true' gradient use disjoint seeds.
Usage: OMP_NUM_THREADS=1 python benchmarks/blackbox_gradient_alignment.py [N_TRUE] [grids e.g. 16,32,none] [N_EST]
(the README's figures: `2048 16,32,none 100`, about 5 minutes single-threaded; prints JSON)
"""
import json, sys, time
import torch
import torch.nn.functional as F
from physical_adv.attack import eot
from physical_adv.attack.estimators import NESConfig, NESEstimator, ScoreObjective
from physical_adv.attack.objectives import OBJECTIVES
from physical_adv.attack.runner import _square_texture
from physical_adv.blackbox.target import open_target
from physical_adv.images import load_image
from physical_adv.models import load_model

torch.set_num_threads(1)
N_TRUE = int(sys.argv[1]) if len(sys.argv) > 1 else 512
GRIDS = [None if g == "none" else int(g) for g in (sys.argv[2] if len(sys.argv) > 2 else "16,32,none").split(",")]
N_EST = int(sys.argv[3]) if len(sys.argv) > 3 else 10
N_WB, S = 5, 256
t0 = time.time()
model = load_model("signs", "cpu")
dist = eot.load_distribution("print-camera")
clean = torch.from_numpy(_square_texture(load_image("sign:stop"), S)).permute(2, 0, 1).unsqueeze(0).float().div(255)
names = list(model.class_names)
true_idx = names.index("stop")
label = torch.tensor([true_idx])


def cos(a, b):
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm() + 1e-300))


def gain(e, g):
    """First-order gain of the L-inf sign step along e, as a fraction of the best (sign of g itself): <g, sign e>/|g|_1."""
    return float((g.flatten().double() @ torch.sign(e).flatten().double()) / g.abs().sum().double())


def scos(a, b):
    return cos(torch.sign(a), torch.sign(b))


def wb_grad(loss, n, gen, batch=64):
    """Mean over n draws of the autograd gradient of the objective (the white-box step's grad when n=32)."""
    total = torch.zeros_like(clean)
    done = 0
    while done < n:
        m = min(batch, n - done)
        x = clean.clone().requires_grad_(True)
        params = eot.sample(dist, m, S, model.input_size, gen, "cpu")
        obj = OBJECTIVES[loss](model(eot.render(x, params)), label.expand(m), False)
        total += torch.autograd.grad(obj, x)[0] * m
        done += m
    return total / n


out = {"n_true": N_TRUE, "texture": S, "eps_255": 32, "losses": {}}
truth = {}
for loss in ("ce", "margin"):
    g1 = wb_grad(loss, N_TRUE // 2, torch.Generator().manual_seed(1000))
    g2 = wb_grad(loss, N_TRUE // 2, torch.Generator().manual_seed(2000))
    g = (g1 + g2) / 2
    truth[loss] = g
    wb = [wb_grad(loss, 32, torch.Generator().manual_seed(3000 + i)) for i in range(N_WB)]
    out["losses"][loss] = {
        "truth_half_split_cos": round(cos(g1, g2), 4), "truth_half_split_sign_cos": round(scos(g1, g2), 4),
        "wb32_cos": [round(cos(w, g), 4) for w in wb], "wb32_sign_cos": [round(scos(w, g), 4) for w in wb],
        "wb32_sign_gain": [round(gain(w, g), 4) for w in wb], "truth_half_sign_gain": round(gain(g1, g), 4),
        "grid": {}}
    print(loss, "truth split", out["losses"][loss]["truth_half_split_cos"], "wb32", out["losses"][loss]["wb32_cos"],
          f"{time.time()-t0:.0f}s", flush=True)

target = open_target("signs", "scores", 5, None, "cpu")
objs = {l: ScoreObjective("stop", None, loss=l) for l in ("ce", "margin")}
for grid in GRIDS:
    cfg = NESConfig(pairs=50, grid=grid, momentum=0.0)
    gen = torch.Generator().manual_seed(7 + (grid or 0))
    est = NESEstimator(target, objs["ce"], dist, model.input_size, cfg, gen)
    ests = {l: [] for l in objs}
    nonzero = []
    for i in range(N_EST):
        u = est.noise(clean)
        answers = target.query(est.renders(clean, u))
        for l, ob in objs.items():
            vals, _, _ = ob.evaluate(answers)
            diff = vals[:50] - vals[50:]
            if l == "ce":
                nonzero.append(int((diff != 0).sum()))
            ests[l].append((diff.view(-1, 1, 1, 1) * u).sum(0, keepdim=True) / (2 * cfg.sigma * 50))
    for l, g in truth.items():
        if grid is None:
            gp = g
        else:  # the grid limit B B^T g
            z = torch.zeros(1, 3, grid, grid, requires_grad=True)
            bt = torch.autograd.grad((F.interpolate(z, size=(S, S), mode="bilinear", align_corners=False) * g).sum(), z)[0]
            gp = F.interpolate(bt, size=(S, S), mode="bilinear", align_corners=False)
        mean10 = torch.stack(ests[l][:10]).mean(0)
        mean_all = torch.stack(ests[l]).mean(0)
        rec = {"limit_cos": round(cos(gp, g), 4), "limit_sign_cos": round(scos(gp, g), 4),
               "single_cos": [round(cos(e, g), 4) for e in ests[l][:10]],
               "single_sign_cos": [round(scos(e, g), 4) for e in ests[l][:10]],
               "single_cos_vs_limit": [round(cos(e, gp), 4) for e in ests[l][:10]],
               "mean10_cos": round(cos(mean10, g), 4), "mean10_sign_cos": round(scos(mean10, g), 4),
               "mean10_cos_vs_limit": round(cos(mean10, gp), 4),
               "limit_sign_gain": round(gain(gp, g), 4), "single_sign_gain": [round(gain(e, g), 4) for e in ests[l][:10]],
               "mean10_sign_gain": round(gain(mean10, g), 4), "mean_all_sign_gain": round(gain(mean_all, g), 4),
               "mean_all_n": N_EST, "mean_all_cos": round(cos(mean_all, g), 4),
               "mean_all_sign_cos": round(scos(mean_all, g), 4), "mean_all_cos_vs_limit": round(cos(mean_all, gp), 4),
               "pairwise_single_cos_mean": round(sum(cos(ests[l][i], ests[l][j]) for i in range(10) for j in range(i + 1, 10)) / 45, 4)}
        if l == "ce":
            rec["nonzero_diffs_per_50"] = nonzero
        out["losses"][l]["grid"][str(grid)] = rec
        print(l, "grid", grid, {k: v for k, v in rec.items() if not isinstance(v, list)},
              "single mean", round(sum(rec["single_cos"]) / 10, 4), f"{time.time()-t0:.0f}s", flush=True)
out["seconds"] = round(time.time() - t0, 1)
print(json.dumps(out, indent=1))
