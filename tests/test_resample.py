"""The area-pyramid rule: which level to sample from, and what a level is."""

import numpy as np
import pytest

from physical_adv.resample import area_downsample, max_pyramid_level, pyramid_level


@pytest.mark.parametrize("ratio, level", [
    (0.3, 0), (1.0, 0), (1.41, 0), (1.42, 1), (2.0, 1), (2.82, 1), (2.83, 2), (4.0, 2), (5.6, 2), (5.7, 3), (100.0, 4),
])
def test_pyramid_level_is_the_nearest_power_of_two_clamped(ratio, level):
    assert pyramid_level(ratio, max_level=4) == level


def test_pyramid_level_takes_an_array_of_ratios_too():
    levels = pyramid_level(np.array([0.5, 1.5, 3.0, 50.0]), max_level=3)
    np.testing.assert_array_equal(levels, [0, 1, 2, 3])


def test_pyramid_level_of_a_degenerate_footprint_is_zero():
    assert pyramid_level(0.0, 3) == 0 and pyramid_level(float("nan"), 3) == 0


def test_max_pyramid_level_keeps_the_short_side_above_the_minimum():
    assert max_pyramid_level((2339, 1654, 3), 64) == 4  # 1654 / 16 = 103 ≥ 64 > 1654 / 32
    assert max_pyramid_level((50, 80), 64) == 0


@pytest.mark.parametrize("dtype, value", [(np.uint8, 173), (np.float32, 0.6789)])
def test_a_flat_field_stays_flat_at_every_level(dtype, value):
    img = np.full((203, 301, 3), value, dtype)
    for level in range(4):
        out = area_downsample(img, level)
        assert out.shape == (203 >> level, 301 >> level, 3) and out.dtype == dtype
        np.testing.assert_allclose(out, value, rtol=1e-6)


def test_a_level_is_the_mean_of_each_block():
    img = np.random.default_rng(0).random((37, 45, 3)).astype(np.float32)
    out = area_downsample(img, 2)
    expected = img[:36, :44].reshape(9, 4, 11, 4, 3).mean((1, 3))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_a_checkerboard_at_the_pixel_scale_averages_to_grey_instead_of_aliasing():
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    np.testing.assert_array_equal(area_downsample(board, 1), np.full((32, 32), 128, np.uint8))
