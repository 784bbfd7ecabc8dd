"""Black-box methods with limited information (issue 11): the partial-information attack,
the label-only proxy, the plateau schedule, and exact query counting through query_attack."""

import numpy as np
import pytest
import torch

from physical_adv.attack import eot
from physical_adv.attack.blackbox_run import query_attack
from physical_adv.attack.estimators import LabelProxyConfig, LabelProxyObjective, NESConfig, ScoreObjective
from physical_adv.attack.schedules import Plateau
from physical_adv.attack.threat import LinfBall
from physical_adv.blackbox.protocol import Label
from physical_adv.blackbox.target import ModelTarget
from physical_adv.images import to_batch
from physical_adv.signs import CLASS_NAMES
from physical_adv.signs.scenes import SignBank, render_scene

NONE = eot.load_distribution("none")


class CountingModel:
    """The target's model, counting every image it is called on (the ground truth for ``queries``)."""

    def __init__(self, model):
        self.model, self.images = model, 0

    def __call__(self, x):
        self.images += x.shape[0]
        return self.model(x)

    def __getattr__(self, name):
        return getattr(self.model, name)


def counted_target(mode: str, top_k: int, budget: int | None) -> tuple[ModelTarget, CountingModel]:
    target = ModelTarget("signs", mode, top_k=top_k, budget=budget, device="cpu")
    target._model = CountingModel(target._model)
    return target, target._model


@pytest.fixture(scope="module")
def stop_and_start(signs_model):
    """A rendered stop scene the model calls stop, and a rendered speed-limit-80 scene it calls that (64 px)."""
    rng = np.random.default_rng(0)
    bank = SignBank(rng, styles_per_class=4)

    def scene(label: str, kind: str):
        for _ in range(50):
            img = to_batch(render_scene(rng, bank, CLASS_NAMES.index(label), 64, kind=kind))
            with torch.no_grad():
                if CLASS_NAMES[int(signs_model(img).argmax(1))] == label:
                    return img
        raise AssertionError(f"no {label} scene classified as such")

    return scene("stop", "print"), scene("speed limit 80", "print")


def test_partial_information_makes_the_target_top1_within_the_final_eps(signs_model, stop_and_start):
    clean, start = stop_and_start
    eps = 32 / 255
    target, counter = counted_target("scores", 1, None)
    result = query_attack(target, clean, "stop", "speed limit 80", method="partial", threat=LinfBall(eps), dist=NONE,
                          out_size=64, views=50, generator=torch.Generator().manual_seed(0), start=start, budget=3000,
                          nes=NESConfig(pairs=50, sigma=0.02, grid=32, momentum=0.9))
    assert result.reached and result.final_eps == pytest.approx(eps)
    assert float((result.x - clean).abs().max()) <= eps + 1e-6
    with torch.no_grad():
        assert CLASS_NAMES[int(signs_model(result.x).argmax(1))] == "speed limit 80"
    assert target.queries == counter.images <= 3000  # measured: 1,616


def test_partial_information_that_runs_out_returns_a_point_in_the_final_ball(stop_and_start):
    clean, start = stop_and_start
    eps = 8 / 255
    target = ModelTarget("signs", "scores", top_k=1, budget=300, device="cpu")
    result = query_attack(target, clean, "stop", "speed limit 80", method="partial", threat=LinfBall(eps), dist=NONE,
                          out_size=64, views=25, generator=torch.Generator().manual_seed(0), start=start)
    assert result.exhausted and not result.reached and result.final_eps > eps
    assert float((result.x - clean).abs().max()) <= eps + 1e-6
    assert target.queries <= 300


def test_label_only_proxy_correlates_with_the_score_objective(stop_and_start):
    clean, start = stop_and_start
    ts = torch.linspace(0, 1, 16).view(-1, 1, 1, 1)
    images = (1 - ts) * clean + ts * start  # from the stop scene to the speed-limit-80 one
    scores = ModelTarget("signs", "scores", top_k=len(CLASS_NAMES), device="cpu")
    logp, _, _ = ScoreObjective("stop", "speed limit 80", loss="ce", floor=1e-30).measure(scores, images, None)
    labels, counter = counted_target("labels", 5, None)
    proxy_objective = LabelProxyObjective("stop", "speed limit 80", LabelProxyConfig(copies=20, noise=0.05))
    proxy, _, _ = proxy_objective.measure(labels, images, torch.Generator().manual_seed(0))
    rank = lambda v: v.argsort().argsort().float()  # noqa: E731
    spearman = float(torch.corrcoef(torch.stack([rank(logp), rank(proxy)]))[0, 1])
    assert spearman > 0.8, spearman
    assert proxy[0] < proxy[-1] and 0 <= float(proxy.min()) and float(proxy.max()) <= 1
    assert labels.queries == counter.images == 16 * 20  # every noisy copy is a query


def test_label_proxy_rank_score_is_k_minus_rank_over_k():
    objective = LabelProxyObjective("stop", "yield")
    names = [Label("stop", None), Label("yield", None), Label("no entry", None)]
    assert objective.rank_score(names) == pytest.approx(2 / 3)
    assert objective.rank_score(names[:1]) == 0.0
    assert objective.rank_score([Label("Yield", None)]) == 1.0  # label mode: the top-1 hit


@pytest.mark.parametrize("method, mode, budget", [
    ("nes", "scores", 500), ("square", "scores", 300), ("partial", "scores", 500), ("label-only", "label", 900),
])
def test_query_attack_counts_every_image_the_model_sees(stop_and_start, method, mode, budget):
    clean, start = stop_and_start
    target, counter = counted_target(mode, 1 if method != "nes" else 5, budget)
    result = query_attack(target, clean, "stop", "speed limit 80", method=method, threat=LinfBall(16 / 255), dist=NONE,
                          out_size=64, views=10, generator=torch.Generator().manual_seed(0), start=start,
                          proxy=LabelProxyConfig(copies=5))
    assert target.queries == counter.images <= budget
    assert float((result.x - clean).abs().max()) <= 16 / 255 + 1e-6


def test_query_attack_budget_caps_a_target_without_one(stop_and_start):
    clean, _ = stop_and_start
    target, counter = counted_target("scores", 5, None)
    result = query_attack(target, clean, "stop", None, method="nes", threat=LinfBall(16 / 255), dist=NONE, out_size=64,
                          views=10, generator=torch.Generator().manual_seed(0), budget=100, early_stop=lambda h: False)
    assert result.exhausted is False and len(result.history) == 5  # 100 // (2 · 10) steps, all paid for
    assert target.queries == counter.images == 100


@pytest.mark.parametrize("kwargs, fragment", [
    ({"method": "spsa"}, "unknown method"),
    ({"method": "label-only"}, "works on --mode labels or label"),
    ({"method": "nes", "budget": 1}, "too small"),
    ({"method": "partial", "start": None}, "start image"),
])
def test_query_attack_refuses_bad_settings_in_one_sentence(stop_and_start, kwargs, fragment):
    clean, start = stop_and_start
    target = ModelTarget("signs", "scores", top_k=1, budget=1000, device="cpu")
    args = {"method": "nes", "start": start, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        query_attack(target, clean, "stop", "speed limit 80", threat=LinfBall(16 / 255), dist=NONE, out_size=64,
                     views=10, generator=torch.Generator().manual_seed(0), **args)
    assert target.queries == 0


def test_plateau_halves_the_step_after_a_plateau_and_stops_at_its_floor():
    plateau = Plateau(0.08, 0.02, length=3)
    for value in (1.0, 2.0, 3.0):  # improving: no change
        plateau.observe(value)
    assert plateau(0) == 0.08
    for value in (2.9, 2.8, 2.7):  # the window [3.0, 2.9, 2.8] ends below its start
        plateau.observe(value)
    assert plateau(0) == 0.04
    for value in (2.6, 2.5, 2.4, 2.3, 2.2, 2.1, 2.0, 1.9, 1.8):
        plateau.observe(value)
    assert plateau(0) == 0.02
