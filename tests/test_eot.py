"""The print-and-photograph distribution: replayable draws, exact identity, gradients through every transform."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from physical_adv.attack import eot
from physical_adv.attack.jpeg import jpeg
from physical_adv.errors import UserError
from physical_adv.images import load_image, to_batch

IDENTITY = eot.EOTDistribution(name="identity")

# One distribution per transform, with only that transform switched on.
SINGLE_TRANSFORMS = {
    "scale": dict(scale=(0.7, 0.8)),
    "rotation": dict(rotation=30.0),
    "tilt": dict(tilt=40.0),
    "translation": dict(translation=0.2),
    "misalignment": dict(misalignment=0.05),
    "saturation": dict(saturation=(0.3, 0.5)),
    "ink_crosstalk": dict(ink_crosstalk=0.3),
    "black_level": dict(black_level=(0.2, 0.3)),
    "paper_white": dict(paper_white=(0.7, 0.8)),
    "paper_tint": dict(paper_tint=0.3),
    "dot_gain": dict(dot_gain=(0.8, 1.0)),
    "exposure": dict(exposure=(0.5, 0.6)),
    "brightness": dict(brightness=(0.1, 0.2)),
    "contrast": dict(contrast=(0.5, 0.6)),
    "gamma": dict(gamma=(1.5, 2.0)),
    "white_balance": dict(white_balance=0.3),
    "light_gradient": dict(light_gradient=0.8),
    "defocus": dict(defocus=(1.0, 1.5)),
    "motion_blur": dict(motion_blur=(3.0, 4.0), motion_blur_p=1.0),
    "noise": dict(noise=(0.05, 0.06)),
    "jpeg": dict(jpeg_quality=(20, 30), jpeg_p=1.0),
}


@pytest.fixture(scope="module")
def texture():
    return to_batch(load_image("sign:stop"), 128)


def _draw(dist, n=4, seed=0, out=32, texture_size=128):
    return eot.sample(dist, n, texture_size, out, torch.Generator().manual_seed(seed))


def test_identity_is_an_exact_area_downsample(texture):
    out = eot.render(texture, _draw(IDENTITY, n=2, out=32))
    expected = torch.nn.functional.avg_pool2d(texture, 4)
    assert out.shape == (2, 3, 32, 32)
    assert torch.allclose(out, expected.expand(2, -1, -1, -1), atol=1e-6)


@pytest.mark.parametrize("name", eot.preset_names())
def test_presets_load_and_render_batches_in_range(texture, name):
    dist = eot.load_distribution(name)
    out = eot.render(texture, _draw(dist, n=8))
    assert out.shape == (8, 3, 32, 32)
    assert out.min() >= 0 and out.max() <= 1


def test_same_seed_replays_the_same_draw(texture):
    dist = eot.load_distribution("print-camera-hard")
    a, b = eot.render(texture, _draw(dist, seed=5)), eot.render(texture, _draw(dist, seed=5))
    c = eot.render(texture, _draw(dist, seed=6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", list(SINGLE_TRANSFORMS))
def test_gradient_flows_through_each_transform(texture, name):
    dist = eot.EOTDistribution(name=name, **SINGLE_TRANSFORMS[name])
    params = _draw(dist, seed=1)
    x = texture.clone().requires_grad_(True)
    out = eot.render(x, params)
    assert not torch.allclose(out, eot.render(texture, _draw(IDENTITY))), "the transform changed nothing"
    weights = torch.linspace(-1, 1, out.numel()).view_as(out)  # a non-trivial upstream gradient
    (out * weights).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_warp_and_blur_pass_gradcheck_in_float64():
    dist = eot.EOTDistribution(rotation=20.0, scale=(0.8, 0.9), defocus=(0.5, 1.0), motion_blur=(1.0, 2.0), motion_blur_p=1.0)
    params = eot.sample(dist, 2, 16, 8, torch.Generator().manual_seed(0))
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)

    def f(t):
        y = eot.warp_texture(t, params)
        return eot._blur(y, params.blur_sigma.double(), params.motion_length.double(), params.motion_angle.double(), params.blur_radius)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5)


def test_pyramid_level_follows_the_footprint():
    far = eot.EOTDistribution(scale=(0.24, 0.26))
    near = eot.EOTDistribution(scale=(0.99, 1.01))
    assert set(eot.sample(far, 8, 512, 64, torch.Generator().manual_seed(0)).level.tolist()) == {5}
    assert set(eot.sample(near, 8, 512, 64, torch.Generator().manual_seed(0)).level.tolist()) == {3}


def test_jpeg_matches_a_real_codec_closely():
    import cv2

    img = cv2.resize(load_image("sign:speed limit 80"), (64, 64), interpolation=cv2.INTER_AREA)
    for quality in (30, 75):
        ours = jpeg(to_batch(img), torch.tensor([float(quality)]))[0].permute(1, 2, 0).numpy() * 255
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        ref = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32)
        assert np.abs(ours - ref).mean() < 2.5, quality  # the codec's own error is 5-11 grey levels


def test_custom_toml_distribution(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\n[geometry]\nrotation = 10\nscale = [0.9, 1.0]\n[compression]\njpeg_quality = [50, 60]\njpeg_p = 0.5\n')
    dist = eot.load_distribution(str(path))
    assert dist.name == "mine" and dist.rotation == 10 and dist.scale == (0.9, 1.0) and dist.jpeg_p == 0.5


def test_unknown_preset_is_a_user_error():
    with pytest.raises(UserError, match="unknown EOT preset"):
        eot.load_distribution("print-and-pray")


def test_unknown_toml_key_is_a_user_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[camera]\nfisheye = 2\n")
    with pytest.raises(UserError, match="fisheye"):
        eot.load_distribution(str(path))


def test_bad_range_is_a_user_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[geometry]\nscale = [1.2, 0.8]\n")
    with pytest.raises(UserError, match="scale"):
        eot.load_distribution(str(path))


def test_the_whole_render_passes_gradcheck_in_float64():
    """The hand-written backward passes (colour/light/gamma, blur edge gain, noise and clip)
    against finite differences; JPEG is left out because its backward is straight-through by design."""
    dist = dataclasses.replace(eot.load_distribution("print-camera-hard"), jpeg_p=0.0)
    params = eot.sample(dist, 3, 16, 8, torch.Generator().manual_seed(3))
    x = (0.2 + 0.6 * torch.rand(1, 3, 16, 16, dtype=torch.float64)).requires_grad_(True)
    assert params.blur_radius and params.noise is not None and bool((params.gamma != 1).any())
    assert torch.autograd.gradcheck(lambda t: eot.render(t, params), (x,), eps=1e-6, atol=1e-5)


def test_blur_keeps_a_flat_field_flat_up_to_the_frame_edge():
    flat = torch.full((2, 3, 20, 20), 0.7)
    out = eot._blur(flat, torch.tensor([1.0, 0.5]), torch.tensor([0.0, 6.0]), torch.tensor([0.0, 0.8]), 5)
    assert torch.allclose(out, flat, atol=1e-5)


def test_noise_from_the_bank_has_the_drawn_strength_and_replays():
    dist = eot.EOTDistribution(noise=(0.05, 0.05))
    a, b = _draw(dist, n=16, seed=2), _draw(dist, n=16, seed=2)
    assert torch.equal(a.noise, b.noise)
    assert abs(float(a.noise.std()) - 0.05) < 0.003
    fresh = eot.sample(dist, 16, 128, 32, torch.Generator().manual_seed(2), fresh_noise=True)
    assert abs(float(fresh.noise.std()) - 0.05) < 0.003 and not torch.equal(fresh.noise, a.noise)
    assert eot.sample(IDENTITY, 2, 128, 32, torch.Generator()).noise is None


@pytest.mark.parametrize("name", eot.preset_names())
def test_only_the_identity_preset_is_deterministic_and_its_draws_are_identical(texture, name):
    dist = eot.load_distribution(name)
    a, b = eot.render(texture, _draw(dist, n=4, seed=1)), eot.render(texture, _draw(dist, n=4, seed=2))
    assert dist.deterministic == (name == "none")
    assert torch.equal(a, b) == dist.deterministic
    if dist.deterministic:
        assert all(torch.equal(a[0], a[i]) for i in range(1, 4))


def test_a_jpeg_or_blur_that_always_applies_the_same_way_is_deterministic():
    assert eot.EOTDistribution(jpeg_quality=(50, 50), jpeg_p=1.0, defocus=(1.0, 1.0)).deterministic
    assert not eot.EOTDistribution(jpeg_quality=(50, 50), jpeg_p=0.5).deterministic
    assert not eot.EOTDistribution(motion_blur=(2.0, 2.0), motion_blur_p=1.0).deterministic  # the angle is drawn


def test_light_ramp_brightens_one_side_of_the_frame_by_the_drawn_amount():
    dist = eot.EOTDistribution(light_gradient=0.5)
    params = _draw(dist, n=3, seed=4, out=32)
    grey = torch.full((1, 3, 128, 128), 0.5)
    out = eot.render(grey, params)
    coords = (torch.arange(32) + 0.5) / 32 - 0.5
    expected = 0.5 * (1 + params.light_ramp[:, 0].view(3, 1, 1) * coords.view(1, 1, 32)
                      + params.light_ramp[:, 1].view(3, 1, 1) * coords.view(1, 32, 1))
    assert params.light_ramp.abs().max() > 0.05 and params.light_ramp.norm(dim=1).max() <= 0.5 + 1e-6
    assert torch.allclose(out, expected.unsqueeze(1).expand(-1, 3, -1, -1), atol=1e-5)


def test_posed_square_foreshortens_and_tapers_along_the_tilt_axis():
    """A hand-computed pose: 60° tilt about the x axis, no rotation. Along x the square shrinks
    by cos 60° = 0.5; the side at −x comes nearer (1 + ¼ sin 60° larger), the side at +x recedes."""
    from physical_adv.pose import TAPER, posed_square

    h = 10.0
    corners = np.float32([[-h, -h], [h, -h], [h, h], [-h, h]])
    s, c = math.sin(math.radians(60)), math.cos(math.radians(60))
    pts = posed_square(corners, h, s, c, np.float32([1, 0]), np.eye(2, dtype=np.float32))
    near, far = 1 + TAPER * s, 1 - TAPER * s
    expected = np.float32([[-h * c * near, -h * near], [h * c * far, -h * far], [h * c * far, h * far], [-h * c * near, h * near]])
    assert np.allclose(pts, expected, atol=1e-5)


def test_scenes_and_eot_pose_a_square_by_the_same_rule():
    """The numpy (training scenes) and batched torch (EOT) paths of the one pose function agree."""
    from physical_adv.pose import posed_square

    rng = np.random.default_rng(0)
    tilt, axis, rot = rng.uniform(0, 0.8, 5), rng.uniform(0, math.pi, 5), rng.uniform(-0.4, 0.4, 5)
    h = 12.0
    corners = np.float32([[-h, -h], [h, -h], [h, h], [-h, h]])

    def rotation(r):
        return np.float32([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])

    one_by_one = np.stack([posed_square(corners, h, math.sin(t), math.cos(t), np.float32([math.cos(a), math.sin(a)]), rotation(r))
                           for t, a, r in zip(tilt, axis, rot)])
    t = torch.tensor(tilt, dtype=torch.float32).view(5, 1, 1)
    batch = posed_square(torch.from_numpy(corners).expand(5, 4, 2), h, torch.sin(t), torch.cos(t),
                         torch.tensor(np.stack([np.cos(axis), np.sin(axis)], 1), dtype=torch.float32).unsqueeze(1),
                         torch.from_numpy(np.stack([rotation(r) for r in rot])))
    assert np.allclose(one_by_one, batch.numpy(), atol=1e-4)


def test_a_batch_of_textures_renders_each_through_its_own_row():
    """``render`` with ``(N, 3, S, S)`` textures equals rendering each texture alone through its row."""
    g = torch.Generator().manual_seed(4)
    textures = torch.rand(6, 3, 128, 128, generator=g)
    params = eot.sample(eot.load_distribution("print-camera"), 6, 128, 64, g, torch.device("cpu"))
    together = eot.render(textures, params)
    for i in range(6):
        row = eot.EOTParams(**{f.name: (v[i : i + 1] if isinstance(v, torch.Tensor) and v.shape[:1] == (6,) else v)
                               for f in dataclasses.fields(params) for v in [getattr(params, f.name)]})
        assert torch.allclose(together[i : i + 1], eot.render(textures[i : i + 1], row), atol=1e-6), i
