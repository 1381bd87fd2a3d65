"""The offload decision: thresholds, ratios and online budgets."""

from __future__ import annotations

import numpy as np
import pytest

from ecc_yolo.policy import (
    Budget,
    BudgetController,
    offload_mask,
    threshold_for_ratio,
    top_share_mask,
)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_ratio_helpers_hit_the_requested_share(ratio):
    scores = np.random.default_rng(0).normal(size=200)
    assert top_share_mask(scores, ratio).sum() == round(ratio * 200)
    assert offload_mask(scores, threshold_for_ratio(scores, ratio)).sum() == round(ratio * 200)
    top = top_share_mask(scores, ratio)
    if 0 < ratio < 1:
        assert scores[top].min() > scores[~top].max()


@pytest.mark.parametrize("value, expected", [(0.3, Budget(ratio=0.3)), ("200kbps", Budget(kbps=200.0)),
                                             (" 12.5 KBPS ", Budget(kbps=12.5)), (None, None)])
def test_budget_parsing(value, expected):
    assert Budget.parse(value) == expected


@pytest.mark.parametrize("bad", [0, 1.5, "fast", "-3kbps", "0kbps", True])
def test_bad_budgets_are_refused(bad):
    with pytest.raises(ValueError, match="budget"):
        Budget.parse(bad)


def test_controller_tracks_an_offload_ratio_whatever_the_score_scale():
    rng = np.random.default_rng(1)
    for shift in (-1.0, 0.0, 2.0):  # scores far above or below the initial threshold
        c = BudgetController(Budget(ratio=0.2), threshold=0.05, step=0.02)
        for score in rng.normal(shift, 0.5, 4000):
            c.record(c.decide(score), 1000)
        assert abs(c.offload_ratio - 0.2) < 0.03


def test_controller_tracks_a_bit_rate():
    rng = np.random.default_rng(2)
    c = BudgetController(Budget(kbps=80.0), fps=10.0, threshold=0.0, step=0.02)  # 1000 bytes/frame allowed
    for score in rng.normal(0.0, 1.0, 4000):
        off = c.decide(score)
        c.record(off, 4000 if off else 0)  # each offload costs 4000 bytes: about a quarter of frames fit
    assert abs(c.kbps - 80.0) / 80.0 < 0.1
    assert abs(c.offload_ratio - 0.25) < 0.05
