"""spatialrl.flux.evaluation's paired gain, worked by hand."""

import math

import pytest

from spatialrl.flux.evaluation import paired_gain


def test_paired_gain_by_hand():
    # differences (1, 0, -1) over the three images scored both times: mean 0, variance 2 / 2 = 1, se 1 / sqrt 3
    gain, se, n = paired_gain([0, 1, 1, None], [1, 1, 0, 1])
    assert (gain, n) == (0.0, 3) and se == pytest.approx(1 / math.sqrt(3))
    gain, se, n = paired_gain([0.5, 0.5], [1.0, 0.5])  # (0.5, 0): mean 0.25, var 0.125, se 0.25
    assert gain == 0.25 and se == pytest.approx(0.25) and n == 2
    assert paired_gain([None], [1.0])[2] == 0 and math.isnan(paired_gain([0.0], [1.0])[1])
    with pytest.raises(ValueError, match="not the same evaluation"):
        paired_gain([0, 1], [1])
