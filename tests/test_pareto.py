"""The Pareto (MGDA min-norm) solver against a brute-force search over the simplex."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ecc_yolo.pareto import min_norm_weights, pareto_direction


def _grid_min(grads: torch.Tensor, step: float) -> float:
    k = grads.shape[0]
    best = float("inf")
    ticks = np.arange(0, 1 + 1e-9, step)
    for w in itertools.product(ticks, repeat=k - 1):
        if sum(w) > 1 + 1e-9:
            continue
        a = torch.tensor([*w, 1 - sum(w)], dtype=torch.float64)
        best = min(best, float((a @ grads).norm() ** 2))
    return best


@pytest.mark.parametrize("k, seed", [(2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2), (3, 3)])
def test_min_norm_point_matches_brute_force(k, seed):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(k, 5, generator=g, dtype=torch.float64)
    grads[1] = -0.5 * grads[0] + 0.3 * grads[1]  # make objectives conflict
    weights = min_norm_weights(grads)
    assert torch.all(weights >= -1e-12) and abs(float(weights.sum()) - 1) < 1e-9
    solver = float((weights @ grads).norm() ** 2)
    grid = _grid_min(grads, 0.002 if k == 2 else 0.01)
    assert solver <= grid + 1e-9  # never worse than the best grid point
    assert solver >= grid - 0.02 * max(grid, 1e-3)  # and the grid (fine) gets close to it


@pytest.mark.parametrize("k", [2, 3, 4])
def test_direction_increases_no_objective_to_first_order(k):
    g = torch.Generator().manual_seed(10 + k)
    for _ in range(20):
        grads = torch.randn(k, 8, generator=g, dtype=torch.float64)
        _, d = pareto_direction(grads)
        # stepping along -d changes objective i by -lr * <d, g_i>: must not be an increase ...
        assert torch.all(grads @ d >= 0)
        # ... and at the min-norm point the optimality condition <d, g_i> >= |d|^2 holds (Frank-Wolfe: to 1e-4)
        assert torch.all(grads @ d >= (d @ d) * (1 - 1e-4) - 1e-12)


def test_known_cases():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    w = min_norm_weights(torch.stack([a, b]))
    assert torch.allclose(w, torch.tensor([0.5, 0.5]))
    w = min_norm_weights(torch.stack([a, -a]))  # opposite gradients: Pareto-stationary, d = 0
    assert torch.allclose(w @ torch.stack([a, -a]), torch.zeros(2))
    w = min_norm_weights(torch.stack([a, 2 * a]))  # same direction: all weight on the shorter one
    assert torch.allclose(w, torch.tensor([1.0, 0.0]))


def test_preferences_move_the_point_but_keep_descent():
    g = torch.Generator().manual_seed(7)
    grads = torch.randn(3, 6, generator=g, dtype=torch.float64)
    w1, d1 = pareto_direction(grads, torch.tensor([1.0, 1.0, 1.0]))
    w2, d2 = pareto_direction(grads, torch.tensor([4.0, 1.0, 1.0]))
    assert not torch.allclose(d1, d2)
    assert torch.all(grads @ d2 >= -1e-9)
