"""benchmarks/blackbox_queries.py: the counting oracle records the first winning query the same way
for every attack, and the benchmark's core runs end to end on two images with tiny budgets."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from physical_adv.blackbox.target import ModelTarget
from physical_adv.images import load_image, to_batch


def _bench():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "blackbox_queries.py"
    spec = importlib.util.spec_from_file_location("blackbox_queries", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _bench()


def test_recording_target_counts_only_a_misclassified_query_inside_the_ball(bench):
    target = bench.RecordingTarget(ModelTarget("signs", "scores", top_k=5, device="cpu"))
    stop, other = to_batch(load_image("sign:stop"), 64), to_batch(load_image("sign:yield"), 64)
    target.start(stop, "stop", 8 / 255, budget=None)
    target.query(torch.cat([stop, other]))  # the yield sign is misclassified but far outside the ball
    assert target.first_success is None and target.queries == 2
    target.start(stop, "stop", 1.0, budget=None)  # now every image is inside the ball
    with pytest.raises(bench.Fooled):
        target.query(torch.cat([stop, other, other]))
    assert target.first_success == 2 and target.queries == 3 and target.inner.queries == 5  # each image counted once


def test_peers_see_the_top5_log_probabilities_and_a_floor(bench, signs_model):
    target = bench.RecordingTarget(ModelTarget("signs", "scores", top_k=5, device="cpu"))
    x = to_batch(load_image("sign:stop"), 64)
    target.start(x, "stop", 0.0, budget=None)
    out = bench.ScoresModule(target)(x)
    with torch.no_grad():
        true = signs_model(x).log_softmax(1)
    shown = out > torch.log(torch.tensor(bench.FLOOR)) + 1
    assert int(shown.sum()) == 5 and torch.allclose(out[shown], true[shown], atol=1e-4)
    probs = bench.ScoresModule(target, probabilities=True)(x)
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-4) and probs.argmax() == true.argmax()


def test_benchmark_core_runs_on_two_images_with_tiny_budgets(bench, tmp_path):
    raw, out = tmp_path / "rows.jsonl", tmp_path / "result.json"
    result = bench.main(["--quick", "--attacks", "ours-square,ours-nes,torchattacks-square", "--no-counting",
                         "--raw", str(raw), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["set"]["n"] == 2 and result["set"]["pgd_fooled_eps"] >= 2
    for name in ("ours-square", "ours-nes", "torchattacks-square"):
        for budget in ("20", "50"):
            r = result["results"][name][budget]
            assert r["n"] == 2 and 0 <= r["fooled"] <= 2 and r["counted_mean"] <= int(budget)
            assert r["median_queries"] is None or 1 <= r["median_queries"] <= int(budget)
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    assert len(rows) == 2 + 2 + 4  # ours: one run at the largest budget; torchattacks: one per budget
    assert all(r["counted"] <= r["run_budget"] for r in rows)
    again = bench.main(["--quick", "--attacks", "ours-square", "--no-counting", "--raw", str(raw)])  # rows reused
    assert again["results"]["ours-square"] == result["results"]["ours-square"]
    assert len(raw.read_text().splitlines()) == len(rows)
