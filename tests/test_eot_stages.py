"""Your own EOT stages (``--eot BASE+module:factory``): kornia transformations on top of a
distribution, drawn per sample, replayed from the draw, differentiable, and used by the
attack's held-out check."""

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

from helpers import assert_one_line_error, run_cli
from physical_adv.attack import eot
from physical_adv.errors import UserError
from physical_adv.images import load_image, to_batch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MODULE = "eot_stages_under_test"
STAGE_CODE = '''
import kornia.augmentation as K
import torch

from outdoor_stages import outdoor

CALLS = []  # the batch shape of every call of ``logged``


def make():
    return K.AugmentationSequential(K.RandomPlasmaShadow(shade_intensity=(-0.6, -0.3), p=1.0),
                                    K.RandomErasing(scale=(0.02, 0.05), value=0.3, p=1.0))


def logged():
    stage = outdoor()

    def run(x):
        CALLS.append(tuple(x.shape))
        return stage(x)

    return run


def with_generator():
    return lambda x, generator: x * (0.5 + 0.5 * torch.rand(x.shape, generator=generator, device=x.device))


not_callable = 3


def returns_a_number():
    return 3


def fails():
    raise RuntimeError("needs a GPU")


def shrinks():
    return lambda x: x[..., ::2, ::2]


def detaches():
    return lambda x: x.detach() * 0.5
'''


@pytest.fixture(scope="module")
def stages_module(tmp_path_factory):
    """The module of test stages, importable as :data:`MODULE` (with ``examples/`` on the path)."""
    folder = tmp_path_factory.mktemp("stages")
    (folder / f"{MODULE}.py").write_text(STAGE_CODE)
    added = [str(folder), str(EXAMPLES)]
    sys.path[:0] = added
    yield sys.modules.get(MODULE) or __import__(MODULE)
    for path in added:
        sys.path.remove(path)
    sys.modules.pop(MODULE, None)
    sys.modules.pop("outdoor_stages", None)


@pytest.fixture(scope="module")
def texture():
    return to_batch(load_image("sign:stop"), 128)


def _draw(spec, seed=0, n=6):
    dist = eot.load_distribution(spec)
    return eot.sample(dist, n, 128, 64, torch.Generator().manual_seed(seed))


def test_a_kornia_stage_changes_the_batch_of_the_same_draw(stages_module, texture):
    plain, staged = _draw("print-camera"), _draw(f"print-camera+{MODULE}:make")
    assert torch.equal(plain.grid_h, staged.grid_h) and torch.equal(plain.colour_a, staged.colour_a)  # the same draw
    without, with_stage = eot.render(texture, plain), eot.render(texture, staged)
    assert with_stage.shape == without.shape and 0 <= with_stage.min() and with_stage.max() <= 1
    changed = (with_stage - without).abs().flatten(1).amax(1)
    assert (changed > 0.05).all()  # every sample of the batch is shaded


def test_gradients_reach_the_texture_through_a_kornia_stage(stages_module, texture):
    weights = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    grads = {}
    for spec in ("print-camera", f"print-camera+{MODULE}:make"):
        x = texture.clone().requires_grad_(True)
        (eot.render(x, _draw(spec)) * weights).sum().backward()
        grads[spec] = x.grad
    staged = grads[f"print-camera+{MODULE}:make"]
    assert torch.isfinite(staged).all() and staged.abs().sum() > 0
    assert not torch.allclose(staged, grads["print-camera"])  # the stage's own derivative is in the chain


def test_the_same_seed_gives_the_same_staged_batch_and_leaves_the_global_stream_alone(stages_module, texture):
    state = torch.get_rng_state()
    spec = f"print-camera+{MODULE}:make"
    first, again, other = _draw(spec, seed=3), _draw(spec, seed=3), _draw(spec, seed=4)
    batch = eot.render(texture, first)
    assert torch.equal(batch, eot.render(texture, first))  # a draw replays
    assert torch.equal(batch, eot.render(texture, again))  # a seed replays
    assert not torch.equal(batch, eot.render(texture, other))
    assert first.stage_seeds != other.stage_seeds  # the stage's draw comes from the generator too
    assert not torch.equal(batch, eot.render(texture, dataclasses.replace(first, stage_seeds=other.stage_seeds)))
    assert torch.equal(torch.get_rng_state(), state)


def test_a_stage_that_takes_a_generator_draws_from_the_seed_of_the_draw(stages_module, texture):
    spec = f"none+{MODULE}:with_generator"
    assert eot.load_distribution(spec).stages[0].takes_generator
    batch = eot.render(texture, _draw(spec, seed=5))
    assert torch.equal(batch, eot.render(texture, _draw(spec, seed=5)))
    assert not torch.equal(batch, eot.render(texture, _draw(spec, seed=6)))


def test_a_stage_makes_a_deterministic_base_random_and_reads_back_from_its_record(stages_module):
    dist = eot.load_distribution(f"none+{MODULE}:make+{MODULE}:with_generator")
    assert eot.load_distribution("none").deterministic and not dist.deterministic
    record = json.loads(json.dumps(eot.distribution_to_dict(dist)))
    assert record["name"] == f"none+{MODULE}:make+{MODULE}:with_generator"
    assert record["stages"] == [f"{MODULE}:make", f"{MODULE}:with_generator"]
    assert eot.EOTDistribution(**record) == dist  # as `evaluate` rebuilds a run's held-out distribution


def test_stages_are_named_on_the_command_line_not_in_a_toml_file(tmp_path):
    path = tmp_path / "cal.toml"
    path.write_text('name = "cal"\nstages = ["x:y"]\n')
    with pytest.raises(UserError, match="unknown EOT parameter"):
        eot.load_distribution(path)


def test_an_attack_optimises_and_checks_through_the_stage_and_records_it(stages_module, capsys, tmp_path):
    spec = f"print-camera+{MODULE}:logged"
    stages_module.CALLS.clear()
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "attack", "--source", "sign:stop", "--eot", spec, "--steps", "2",
                                "--samples", "4", "--eval-samples", "8", "--texture-size", "64", "--no-early-stop",
                                "--device", "cpu", "--out", out)
    assert code == 0, err
    record = json.loads((out / "attack.json").read_text())
    assert record["config"]["eot"] == spec
    assert record["eot_distribution"]["stages"] == record["eval_distribution"]["stages"] == [f"{MODULE}:logged"]
    assert record["eval_distribution_reason"] == "the same as --eot (no --eval-eot given)"
    assert f"8 held-out {spec} draws" in stdout
    # the probe when loaded, the two optimisation steps, then the adversarial and the clean held-out checks
    assert stages_module.CALLS == [(2, 3, 64, 64)] + [(4, 3, 64, 64)] * 2 + [(8, 3, 64, 64)] * 2


@pytest.mark.parametrize("stage, fragment", [
    ("no_such_stage_module:make", "cannot import 'no_such_stage_module' for EOT stage"),
    ("rain", "an EOT stage is named module:factory"),
    (f"{MODULE}:not_callable", f"{MODULE} has no callable 'not_callable'"),
    (f"{MODULE}:returns_a_number", "returned int, not a callable"),
    (f"{MODULE}:fails", f"{MODULE}:fails() fails: needs a GPU"),
    (f"{MODULE}:shrinks", "must return a batch of the shape it was given, (2, 3, 64, 64); it returned (2, 3, 32, 32)"),
    (f"{MODULE}:detaches", "does not pass gradients"),
])
def test_a_bad_stage_is_one_error_line(stages_module, capsys, tmp_path, stage, fragment):
    code, _, err = run_cli(capsys, "attack", "--source", "sign:stop", "--eot", f"print-camera+{stage}", "--steps", "1",
                           "--texture-size", "64", "--device", "cpu", "--out", tmp_path / "run")
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "run").exists()
