"""The Square attack (Andriushchenko et al. 2020), L∞ and L2: every image it sends stays in the ball,
a budget ends it cleanly, and it fools an easy image at a generous radius."""

import pytest
import torch

from physical_adv.attack import eot
from physical_adv.attack.estimators import ScoreObjective
from physical_adv.attack.square import SquareConfig, opposite_halves, pseudo_gaussian_bump, square_attack
from physical_adv.attack.threat import L2Ball, LinfBall, Patch
from physical_adv.blackbox.target import ModelTarget
from physical_adv.images import load_image, to_batch
from physical_adv.signs import CLASS_NAMES


class BallWatchingTarget(ModelTarget):
    """The real signs target, also noting the largest L∞ and L2 distance of any image sent from ``clean``."""

    def __init__(self, clean: torch.Tensor, budget: int) -> None:
        super().__init__("signs", "scores", top_k=5, budget=budget, device="cpu")
        self.clean, self.linf, self.l2 = clean, 0.0, 0.0

    def _answer(self, images):
        d = (images - self.clean).flatten(1)
        self.linf = max(self.linf, float(d.abs().amax()))
        self.l2 = max(self.l2, float(d.norm(dim=1).amax()))
        return super()._answer(images)


@pytest.fixture(scope="module")
def stop():
    return to_batch(load_image("sign:stop"), 64)


def _run(target, clean, threat, name="stop", seed=0, **cfg):
    return square_attack(target, ScoreObjective(name, loss="margin"), clean, threat, eot.load_distribution("none"), 1,
                         64, torch.Generator().manual_seed(seed), SquareConfig(**cfg))


def test_l2_square_sends_only_images_inside_the_l2_ball(stop):
    target = BallWatchingTarget(stop, budget=60)
    result = _run(target, stop, L2Ball(2.0), p_init=0.1)
    assert target.queries == 60 and result.exhausted
    assert 1.0 < target.l2 <= 2.0 + 1e-4  # it uses the ball (the clipping to [0, 1] only shortens)
    assert float((result.x - stop).norm()) <= 2.0 + 1e-4


def test_linf_square_sends_only_images_inside_the_linf_ball(stop):
    target = BallWatchingTarget(stop, budget=60)
    result = _run(target, stop, LinfBall(8 / 255))
    assert target.queries == 60 and result.exhausted
    assert target.linf == pytest.approx(8 / 255, abs=1e-6)  # vertices of the ball, never beyond
    assert float((result.x - stop).abs().max()) <= 8 / 255 + 1e-6


def test_a_budget_ends_square_cleanly_with_the_best_point_so_far(stop):
    target = ModelTarget("signs", "scores", top_k=5, budget=7, device="cpu")
    result = _run(target, stop, L2Ball(3.0))
    assert result.exhausted and target.queries == 7 and len(result.history) == 7  # the start, then one report per candidate
    objectives = [r.objective for r in result.history]
    assert objectives == sorted(objectives)  # random search only keeps improvements
    tiny = ModelTarget("signs", "scores", top_k=5, budget=1, device="cpu")  # pays for the start, no candidate
    assert _run(tiny, stop, LinfBall(8 / 255)).exhausted and tiny.queries == 1


def test_l2_square_fools_an_easy_sign_at_a_generous_radius(signs_model):
    clean = to_batch(load_image("sign:no vehicles"), 64)
    target = ModelTarget("signs", "scores", top_k=5, budget=600, device="cpu")
    result = _run(target, clean, L2Ball(16.0), name="no vehicles", p_init=0.1)
    assert result.history[-1].success == 1.0 and target.queries < 600
    assert float((result.x - clean).norm()) <= 16.0 + 1e-4
    with torch.no_grad():
        assert signs_model(result.x).argmax(1).item() != CLASS_NAMES.index("no vehicles")


def test_a_fixed_schedule_makes_a_short_run_the_start_of_a_long_one(stop):
    """With ``schedule_iters`` the square sizes do not depend on the budget: a run cut at 30
    queries made exactly the first 30 queries of a run with 60."""
    short, long = (ModelTarget("signs", "scores", top_k=5, budget=b, device="cpu") for b in (30, 60))
    a = _run(short, stop, LinfBall(8 / 255), schedule_iters=10000)
    b = _run(long, stop, LinfBall(8 / 255), schedule_iters=10000)
    assert [r.objective for r in a.history] == [r.objective for r in b.history][: len(a.history)]
    c = _run(ModelTarget("signs", "scores", top_k=5, budget=30, device="cpu"), stop, LinfBall(8 / 255))
    assert [r.alpha for r in c.history] != [r.alpha for r in a.history]  # the paper's schedule shrinks to the budget


def test_l2_proposal_pieces_are_unit_norm_with_opposite_halves():
    bump = pseudo_gaussian_bump(5, 7)
    assert float(bump.norm()) == pytest.approx(1.0) and bump.argmax() == 2 * 7 + 3  # peak at the centre
    halves = opposite_halves(6, torch.Generator().manual_seed(0))
    assert float(halves.norm()) == pytest.approx(1.0) and float(halves.sum()) == pytest.approx(0.0, abs=1e-6)


def test_square_refuses_a_patch_threat(stop):
    target = ModelTarget("signs", "scores", top_k=5, budget=5, device="cpu")
    with pytest.raises(ValueError, match="L∞ or L2"):
        _run(target, stop, Patch(torch.ones(1, 1, 64, 64)))
