"""spatialrl.flux.evaluation's paired gain and image grid, worked by hand."""

import math

import pytest

from spatialrl.flux.evaluation import paired_gain, ranking_agreement


def test_paired_gain_by_hand():
    # differences (1, 0, -1) over the three images scored both times: mean 0, variance 2 / 2 = 1, se 1 / sqrt 3
    gain, se, n = paired_gain([0, 1, 1, None], [1, 1, 0, 1])
    assert (gain, n) == (0.0, 3) and se == pytest.approx(1 / math.sqrt(3))
    gain, se, n = paired_gain([0.5, 0.5], [1.0, 0.5])  # (0.5, 0): mean 0.25, var 0.125, se 0.25
    assert gain == 0.25 and se == pytest.approx(0.25) and n == 2
    assert paired_gain([None], [1.0])[2] == 0 and math.isnan(paired_gain([0.0], [1.0])[1])
    with pytest.raises(ValueError, match="not the same evaluation"):
        paired_gain([0, 1], [1])


def test_ranking_agreement_by_hand():
    # group 1: truths (1, 0.5, 0.5): pairs (0,1) and (0,2) differ; scores 3 > 1 agrees, 3 vs 3 ties (a half); the
    # equal-truth pair (1,2) is not counted. group 2: truths (0, 1, None): pair (3,4) only, scores 2 > 0 disagree.
    share, n = ranking_agreement([3, 1, 3, 2, 0, 5], [1, 0.5, 0.5, 0, 1, None], group_size=3)
    assert n == 3 and share == pytest.approx(1.5 / 3)
    share, n = ranking_agreement([0.2, 0.1], [1, 0], group_size=2)
    assert (share, n) == (1.0, 1)
    share, n = ranking_agreement([0.2, 0.1], [1, 1], group_size=2)  # nothing to order
    assert n == 0 and math.isnan(share)
    with pytest.raises(ValueError, match="groups of 4"):
        ranking_agreement([1, 2, 3], [1, 2, 3], group_size=4)
    with pytest.raises(ValueError, match="not the same images"):
        ranking_agreement([1, 2], [1], group_size=2)


def test_image_grid_places_images_row_major_with_white_gaps():
    import numpy as np

    from spatialrl.flux.evaluation import image_grid

    images = np.array([[[[10, 20, 30]]], [[[40, 50, 60]]], [[[70, 80, 90]]], [[[1, 2, 3]]]], dtype=np.uint8)
    grid = np.asarray(image_grid(images, rows=2, pad=1))  # 2 x 2 one-pixel images, 1-pixel gaps: 5 x 5
    assert grid.shape == (5, 5, 3)
    assert grid[1, 1].tolist() == [10, 20, 30] and grid[1, 3].tolist() == [40, 50, 60]
    assert grid[3, 1].tolist() == [70, 80, 90] and grid[3, 3].tolist() == [1, 2, 3]
    gaps = np.ones((5, 5), bool)
    gaps[1::2, 1::2] = False
    assert (grid[gaps] == 255).all()
    assert np.asarray(image_grid(images[:1], rows=1, pad=1)).shape == (3, 3, 3)  # a lone image keeps its border
    with pytest.raises(ValueError, match="do not fill 3 rows"):
        image_grid(images, rows=3)


def test_evaluate_samples_with_grpos_sde_when_asked():
    from jobs.evaluate import EvaluateConfig, sampler_config
    from spatialrl.config import ConfigError

    cfg = EvaluateConfig(benchmark="spatialworld", prompts="p.jsonl")
    assert sampler_config(cfg).noise_level == 0.0  # the benchmarks' protocol: the ODE
    cfg.generation.noise_level, cfg.generation.sde_steps = 0.7, 2
    s = sampler_config(cfg)
    assert (s.noise_level, s.sde_steps) == (0.7, 2)
    cfg.generation.sde_steps = 99
    with pytest.raises(ConfigError, match="generation.sde_steps=99"):
        cfg.generation.validate()
