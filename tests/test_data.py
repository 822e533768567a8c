"""Dataset validation and the two square-loss normalizations."""

import numpy as np
import pytest

import implicit_flow as imf


@pytest.mark.parametrize(
    "x, y, match",
    [
        (np.ones((3, 2)), np.ones(4), "3 rows but y has 4"),
        (np.ones(3), np.ones(3), r"x must have shape \(n, d\)"),
        (np.ones((3, 2)), np.ones((3, 1)), r"y must have shape \(n,\)"),
        (np.ones((0, 2)), np.ones(0), "empty"),
        (
            np.array([[1.0, np.nan], [0.0, 1.0]]),
            np.ones(2),
            r"x has 1 non-finite .* \(0, 1\)",
        ),
        (np.ones((2, 2)), np.array([1.0, np.inf]), r"y has 1 non-finite .* \(1,\)"),
    ],
)
def test_bad_data_raises_a_named_value_error(x, y, match):
    with pytest.raises(ValueError, match=match):
        imf.Dataset(x, y)


def test_square_losses():
    pred, y = np.array([1.0, 2.0, 4.0]), np.array([0.0, 2.0, 1.0])
    assert float(imf.SumSquareLoss()(pred, y)) == pytest.approx(0.5 * (1 + 9))
    assert float(imf.MeanSquareLoss()(pred, y)) == pytest.approx(0.5 * 10 / 3)
