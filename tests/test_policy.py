"""The offload decision: thresholds, ratios and online budgets."""

from __future__ import annotations

import numpy as np
import pytest

from ecc_yolo.policy import (
    Budget,
    BudgetController,
    cheapest_payload,
    decide,
    offload_mask,
    three_exit_choice,
    threshold_for_ratio,
    top_share_mask,
)
from ecc_yolo.routes import ADAPTED, CLOUD, EDGE, EXTENSION, ROUTE_CODES, exits_to_routes


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


def test_decide_single_exit_by_threshold_ratio_and_controller():
    gains = np.array([[0.2, 0.0], [0.01, 0.5], [0.06, 0.07], [-0.1, 0.3]])  # (adapted, cloud) per frame
    by_threshold = decide(gains, threshold=0.05)
    assert by_threshold.routes.tolist() == [ROUTE_CODES[ADAPTED], ROUTE_CODES[EDGE], ROUTE_CODES[ADAPTED],
                                            ROUTE_CODES[EDGE]]
    assert by_threshold.scores.tolist() == gains[:, 0].tolist() and by_threshold.offloaded.sum() == 2
    ecc_i = decide(gains, ratio=0.5, offload_to=CLOUD)  # ranked by the cloud's gain
    assert ecc_i.answered_by(CLOUD).tolist() == [False, True, False, True]
    controller = BudgetController(Budget(ratio=0.5), threshold=0.1)
    assert decide(gains, controller=controller).answered_by(ADAPTED).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="exactly one"):
        decide(gains, threshold=0.05, ratio=0.5)
    with pytest.raises(ValueError, match="exactly one"):
        decide(gains)


def test_decide_three_way_sends_the_jpeg_only_when_the_cloud_beats_features_by_the_margin():
    gains = np.array([[0.2, 0.21], [0.01, 0.5], [0.0, 0.0], [0.3, 0.1], [0.1, 0.28]])
    # ranked by the gain of the route each would take: 0.5 (1, JPEG), 0.3 (3), 0.28 (4, JPEG), 0.2 (0), 0.0 (2)
    routes = decide(gains, ratio=0.6, margin=0.05).routes
    assert routes.tolist() == [ROUTE_CODES[EDGE], ROUTE_CODES[CLOUD], ROUTE_CODES[EDGE], ROUTE_CODES[ADAPTED],
                               ROUTE_CODES[CLOUD]]
    # frame 4 by the larger gain (0.28) would go before frame 0 as well, but as features its gain is 0.1: it is
    # ranked by what it would get, below frame 0
    routes = decide(gains, ratio=0.8, margin=0.2).routes
    assert routes.tolist() == [ROUTE_CODES[ADAPTED], ROUTE_CODES[CLOUD], ROUTE_CODES[EDGE], ROUTE_CODES[ADAPTED],
                               ROUTE_CODES[ADAPTED]]
    assert decide(gains, ratio=0.6, margin=0.2).routes[4] == ROUTE_CODES[EDGE]


def test_three_way_at_extreme_margins_is_exactly_ecc_d_or_ecc_i():
    gains = np.random.default_rng(5).normal(size=(40, 2))
    gap = gains[:, 1] - gains[:, 0]
    for ratio in (0.1, 0.5, 1.0):
        never = decide(gains, ratio=ratio, margin=float(gap.max()) + 1e-6)
        always = decide(gains, ratio=ratio, margin=float(gap.min()) - 1e-6)
        assert np.array_equal(never.routes, decide(gains, ratio=ratio, offload_to=ADAPTED).routes)
        assert np.array_equal(always.routes, decide(gains, ratio=ratio, offload_to=CLOUD).routes)
        assert never.offloaded.sum() == always.offloaded.sum() == round(ratio * 40)


def test_decide_multi_exit_is_the_routers_choice_and_respects_a_ratio():
    logits = np.random.default_rng(3).normal(size=(50, 3)) * 2
    own = decide(exit_logits=logits)
    assert np.array_equal(own.routes, exits_to_routes(three_exit_choice(logits)))
    at_ratio = decide(exit_logits=logits, ratio=0.2)
    assert np.array_equal(at_ratio.routes, exits_to_routes(three_exit_choice(logits, 0.2)))
    assert at_ratio.answered_by(ADAPTED).sum() == 10  # the cloud exit is answered by the adapted route
    hard = np.array([[0.0, 5.0, 1.0]])  # more likely hard than easy, not sent: the extension exit answers it
    assert decide(exit_logits=hard, threshold=0.9).answered_by(EXTENSION).tolist() == [True]


def test_forced_frames_are_offloaded_whatever_their_score_and_go_where_offloaded_frames_go():
    """A cue from outside the gate (a tracker that started or lost a track) offloads a frame the threshold keeps."""
    from ecc_yolo.policy import decide
    from ecc_yolo.routes import ADAPTED, CLOUD, EDGE, EXTENSION, ROUTE_CODES

    gains = np.array([[0.0, 0.5], [0.01, 0.0], [0.2, 0.1]])
    force = np.array([True, True, False])
    d = decide(gains, threshold=10.0, force=force)
    assert d.offloaded.tolist() == [True, True, False]
    assert d.routes.tolist() == [ROUTE_CODES[ADAPTED]] * 2 + [ROUTE_CODES[EDGE]]
    d = decide(gains, threshold=10.0, margin=0.05, force=force)  # ECC_D+: the JPEG where the cloud gains more
    assert d.routes.tolist() == [ROUTE_CODES[CLOUD], ROUTE_CODES[ADAPTED], ROUTE_CODES[EDGE]]
    assert decide(gains, threshold=10.0).offloaded.sum() == 0  # without the cue nothing goes
    logits = np.array([[5.0, 0.0, -5.0], [0.0, 5.0, -5.0]])  # the exit router: main, extension
    d = decide(exit_logits=logits, force=np.array([True, False]))
    assert d.offloaded.tolist() == [True, False]
    assert d.answered_by(EXTENSION).tolist() == [False, True]  # the unforced frame keeps its exit


def test_cheapest_payload_sends_the_fewest_bytes_within_the_margin():
    gains = np.array([[0.10, 0.20], [0.10, 0.20], [0.30, 0.05]])  # (adapted, cloud)
    deltas = np.array([0.08, 0.01])  # JPEG q10 loses 0.08 of the cloud's gain, q30 0.01
    sizes = np.array([[2600, 1300, 1800], [2600, 1300, 1800], [900, 1300, 1800]])  # features, q10, q30
    sizes[1] = [1000, 1300, 1800]  # frame 1's features happen to be the smallest payload
    # predicted: frame 0 and 1 (0.10, 0.12, 0.19), frame 2 (0.30, -0.03, 0.04)
    kind, score = cheapest_payload(gains, deltas, sizes, margin=0.0)
    assert kind.tolist() == [2, 2, 0]  # margin 0: the best predicted kind
    np.testing.assert_allclose(score, [0.19, 0.19, 0.30])
    kind, _ = cheapest_payload(gains, deltas, sizes, margin=0.095)
    assert kind.tolist() == [1, 0, 0]  # q10 (0.12) and features (0.10) qualify: the smaller of each frame wins
    kind, _ = cheapest_payload(gains, deltas, sizes, margin=0.075)
    assert kind.tolist() == [1, 1, 0]  # features (0.10) no longer within the margin of 0.19
    kind, _ = cheapest_payload(gains, deltas, sizes, margin=np.inf)
    assert kind.tolist() == [1, 0, 0]  # any gain: the smallest payload


def test_cheapest_payload_breaks_byte_ties_by_gain_and_refuses_bad_input():
    kind, _ = cheapest_payload(np.array([[0.1, 0.3]]), np.array([0.0, 0.1]), np.array([[500, 500, 500]]), margin=1.0)
    assert kind.tolist() == [1]  # equal bytes: the higher predicted gain (0.3 > 0.2 > 0.1)
    with pytest.raises(ValueError, match="margin"):
        cheapest_payload(np.zeros((1, 2)), np.zeros(1), np.ones((1, 2)), margin=-0.01)
    with pytest.raises(ValueError, match="payload_bytes"):
        cheapest_payload(np.zeros((2, 2)), np.zeros(2), np.ones((2, 2)), margin=0.0)
