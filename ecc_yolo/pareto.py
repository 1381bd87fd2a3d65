"""Pareto descent: the min-norm convex combination of objective gradients (MGDA, Désidéri 2012; Sener & Koltun 2018).

For gradients g_1..g_k, the direction d = sum_i a_i g_i with a on the simplex minimising |d| satisfies
<d, g_i> >= |d|^2 for every i, so a step along -d decreases no objective to first order (and d = 0 means the point
is Pareto-stationary). Two objectives have a closed form; more use Frank-Wolfe on the Gram matrix.
A preference vector p (p_i > 0) scales the gradients before solving, which moves the point reached along the
frontier while keeping d a common descent direction (<d, p_i g_i> >= |d|^2 > 0 implies <d, g_i> > 0).
"""

from __future__ import annotations

import torch

FW_MAX_ITER = 500
FW_TOL = 1e-10


def _two(g00: torch.Tensor, g01: torch.Tensor, g11: torch.Tensor) -> torch.Tensor:
    """Weight a on g0 minimising |a g0 + (1 - a) g1|^2, from the Gram entries."""
    denom = g00 - 2 * g01 + g11
    if denom <= 0:  # identical gradients: any split is optimal
        return torch.tensor(0.5, dtype=g00.dtype, device=g00.device)
    return ((g11 - g01) / denom).clamp(0.0, 1.0)


def min_norm_weights(grads: torch.Tensor) -> torch.Tensor:
    """Simplex weights a (k,) minimising |a @ grads| for a (k, n) stack of gradients."""
    k = grads.shape[0]
    gram = (grads @ grads.T).double()
    if k == 1:
        return torch.ones(1, dtype=grads.dtype, device=grads.device)
    if k == 2:
        a = _two(gram[0, 0], gram[0, 1], gram[1, 1])
        return torch.stack([a, 1 - a]).to(grads.dtype)
    # Frank-Wolfe: start from the best pair, then move towards the vertex with the smallest directional product.
    best, weights = None, None
    for i in range(k):
        for j in range(i + 1, k):
            a = _two(gram[i, i], gram[i, j], gram[j, j])
            w = torch.zeros(k, dtype=gram.dtype, device=gram.device)
            w[i], w[j] = a, 1 - a
            value = w @ gram @ w
            if best is None or value < best:
                best, weights = value, w
    for _ in range(FW_MAX_ITER):
        products = gram @ weights
        value = weights @ products
        t = int(torch.argmin(products))
        if value - products[t] <= FW_TOL * max(float(value), 1e-30):  # Frank-Wolfe duality gap closed
            break
        vertex = torch.zeros_like(weights)
        vertex[t] = 1.0
        # exact line search on the segment to the vertex: a two-point min-norm problem
        step = _two(gram[t, t], products[t], value)  # weight on the vertex
        weights = (1 - step) * weights + step * vertex
    return _polish(gram, weights).to(grads.dtype)


def _polish(gram: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Finish Frank-Wolfe exactly with a few active-set steps on the KKT system.

    Frank-Wolfe converges slowly near the optimum (it zig-zags between vertices), but it finds the support; on a
    support S the optimum is one linear solve. Indices with negative weight leave S, indices whose directional
    product undercuts the optimum's value join it, until the KKT conditions hold.
    """
    support = [int(i) for i in torch.nonzero(weights > 1e-6).flatten()]
    best = weights
    for _ in range(4 * len(weights)):
        solution = _solve_on(gram, support)
        while solution.min() < 0:
            support.pop(int(torch.argmin(solution)))
            solution = _solve_on(gram, support)
        candidate = torch.zeros_like(weights)
        candidate[support] = solution
        value = candidate @ gram @ candidate
        if value <= best @ gram @ best:
            best = candidate
        products = gram @ candidate
        outside = [i for i in range(len(weights)) if i not in support]
        if not outside or products[outside].min() >= value * (1 - 1e-12):
            break
        support.append(outside[int(torch.argmin(products[outside]))])
    return best


def _solve_on(gram: torch.Tensor, support: list[int]) -> torch.Tensor:
    """Minimiser of w' G w with sum(w) = 1 over the given support (may have negative entries)."""
    m = len(support)
    kkt = torch.zeros(m + 1, m + 1, dtype=gram.dtype, device=gram.device)
    kkt[:m, :m] = 2 * gram[support][:, support]
    kkt[:m, m] = 1
    kkt[m, :m] = 1
    rhs = torch.zeros(m + 1, 1, dtype=gram.dtype, device=gram.device)
    rhs[m] = 1
    return torch.linalg.lstsq(kkt, rhs).solution[:m, 0]


def pareto_direction(grads: torch.Tensor, prefs: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Min-norm common descent direction of (k, n) gradients, optionally preference-scaled.

    Returns:
        weights: (k,) simplex weights on the (scaled) gradients.
        direction: (n,) the combined gradient d.
    """
    if prefs is not None:
        grads = grads * prefs.to(grads)[:, None]
    weights = min_norm_weights(grads)
    return weights, weights @ grads
