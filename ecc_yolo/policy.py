"""The offload decision: where each frame is answered. `decide` is the one function that makes it.

The gate (`ecc_yolo.nn.gate`) predicts, per frame, the gain in AP50-95 that each offload route would bring over the
edge; a multi-exit edge's exit router gives logits over its exits (`ecc_yolo.routes`). `decide` turns either into a
route per frame, by a threshold (what `route=auto` does: `gate_threshold`, default `GAIN_THRESHOLD`), an offload
ratio (evaluation at an operating point) or a `BudgetController` (a stream under a budget). The predictor, the stream
client, the training-time validator and the benchmark's routers all call it. The rest are its building blocks:
- `offload_mask` / `top_share_mask` / `threshold_for_ratio`: threshold, or take a share of, scores;
- `prefers_cloud` / `three_way_priority` / `three_way_routes`: ECC_D+'s JPEG-or-features choice and ranking;
- `cheapest_payload`: ECC_D+ over payload kinds (features or a JPEG at one of several qualities), evaluated offline;
- `exit_probabilities` / `three_exit_choice`: MEANet's exit router;
- `BudgetController`: move the threshold online so that a stream respects an offload ratio or a bit rate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecc_yolo.routes import (
    ADAPTED,
    CLOUD,
    EDGE,
    EXIT_CODES,
    EXTENSION,
    GATE_ROUTES,
    MAIN,
    ROUTE_CODES,
    exits_to_routes,
)

# route=auto offloads a frame when the gate expects the adapted route to raise its AP50-95 by more than this (the
# default of `gate_threshold`, the model's own and the `gate_threshold=` argument's)
GAIN_THRESHOLD = 0.05
THREE_WAY_MARGIN = 0.05  # ECC_D+ sends the JPEG when the cloud's predicted gain beats the adapted one by more


def offload_mask(scores: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean (N,): offload the frames whose predicted gain is above `threshold`."""
    return np.asarray(scores) > threshold


def threshold_for_ratio(scores: np.ndarray, ratio: float) -> float:
    """Threshold that offloads the `ratio` share of `scores` with the highest values (ties may shift it slightly)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    if len(s) == 0:
        return 0.0
    k = int(round(ratio * len(s)))
    if k <= 0:
        return float(np.nextafter(s[0], np.inf))
    if k >= len(s):
        return float(np.nextafter(s[-1], -np.inf))
    return float((s[k - 1] + s[k]) / 2)


def top_share_mask(scores: np.ndarray, ratio: float) -> np.ndarray:
    """Boolean (N,): exactly round(ratio * N) frames with the highest scores (ties broken by order), for
    evaluating a router at a given offload ratio."""
    scores = np.asarray(scores, dtype=np.float64)
    k = int(round(ratio * len(scores)))
    mask = np.zeros(len(scores), dtype=bool)
    mask[np.argsort(-scores, kind="stable")[:k]] = True
    return mask


@dataclass
class Budget:
    """A stream's offload budget: a share of frames, or a bit rate (kbit/s) at a frame rate."""

    ratio: float | None = None
    kbps: float | None = None

    @classmethod
    def parse(cls, value: float | str | None) -> Budget | None:
        """`0.3` (share of frames) or `"200kbps"` (bit rate); None for no budget.

        Raises:
            ValueError: anything else.
        """
        if value is None:
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not 0 < value <= 1:
                raise ValueError(f"budget ratio must be in (0, 1], got {value}")
            return cls(ratio=float(value))
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*kbps\s*", str(value).lower())
        if not match or float(match.group(1)) <= 0:
            raise ValueError(f"budget must be an offload ratio in (0, 1] or a bit rate such as 200kbps, got {value!r}")
        return cls(kbps=float(match.group(1)))


@dataclass
class BudgetController:
    """Adapts the offload threshold online so that the realised offload ratio (or bit rate) tracks a budget.

    After each decision the threshold moves by `step` times the error between what was spent and what the budget
    allows for one frame (a stochastic-approximation update): spending too much raises the threshold, spending too
    little lowers it. With a bit-rate budget the allowance per frame is kbps * 1000 / 8 / fps bytes and the error
    is measured in units of the running mean payload size.
    """

    budget: Budget
    threshold: float = GAIN_THRESHOLD
    fps: float = 30.0
    step: float = 0.05
    mean_payload_bytes: float = 0.0
    decisions: int = field(default=0, init=False)
    offloads: int = field(default=0, init=False)
    bytes_sent: int = field(default=0, init=False)

    def decide(self, score: float) -> bool:
        """Offload this frame? (Then report what was sent with `record`.)"""
        return bool(score > self.threshold)

    def record(self, offloaded: bool, payload_bytes: int = 0) -> None:
        """Account one frame's decision (and the bytes it sent) and move the threshold."""
        self.decisions += 1
        self.offloads += int(offloaded)
        self.bytes_sent += int(payload_bytes)
        if offloaded and payload_bytes:
            n = self.offloads
            self.mean_payload_bytes += (payload_bytes - self.mean_payload_bytes) / n
        if self.budget.ratio is not None:
            error = float(offloaded) - self.budget.ratio
        else:
            allowance = self.budget.kbps * 1000 / 8 / self.fps
            unit = self.mean_payload_bytes or max(payload_bytes, 1)
            error = (payload_bytes - allowance) / unit
        self.threshold += self.step * error

    @property
    def offload_ratio(self) -> float:
        """Share of frames offloaded so far."""
        return self.offloads / self.decisions if self.decisions else 0.0

    @property
    def kbps(self) -> float:
        """Bit rate spent so far, at the controller's frame rate."""
        return self.bytes_sent * 8 / 1000 / (self.decisions / self.fps) if self.decisions else 0.0


class StreamBudgets:
    """The offload budgets of an edge client reading one or several streams: one over all of them (`budget=`) and one
    per stream (`stream_budget=`), each a `BudgetController`; a frame is offloaded when its score clears every
    threshold that applies to it, and what it sent is recorded by each.

    With one stream and `budget=` only, this is exactly that stream's controller.
    """

    def __init__(self, total: Budget | None, per_stream: Budget | None, start: float, fps: dict[int, float]
                 ) -> None:
        """`start`: the threshold the controllers start from; `fps`: frames per second of each stream (the total
        budget's frame rate is their sum)."""
        self.total = BudgetController(total, threshold=start, fps=sum(fps.values())) if total is not None else None
        self.per_stream = {s: BudgetController(per_stream, threshold=start, fps=f) for s, f in fps.items()} \
            if per_stream is not None else {}

    def thresholds(self, streams: list[int]) -> np.ndarray:
        """(N,) the threshold each frame's score must clear, for frames of `streams`."""
        return np.array([max([c.threshold for c in self._controllers(s)], default=-np.inf) for s in streams])

    def record(self, stream: int, offloaded: bool, payload_bytes: int = 0) -> None:
        """Account one frame of `stream` with every budget that applies to it."""
        for c in self._controllers(stream):
            c.record(offloaded, payload_bytes)

    def _controllers(self, stream: int) -> list[BudgetController]:
        return [c for c in (self.total, self.per_stream.get(stream)) if c is not None]

    def describe(self) -> dict[str, Any]:
        """Where the thresholds stand (for the summary)."""
        out: dict[str, Any] = {}
        if self.total is not None:
            out["budget_threshold"] = round(self.total.threshold, 5)
        if self.per_stream:
            out["stream_budget_thresholds"] = {s: round(c.threshold, 5) for s, c in self.per_stream.items()}
        return out


def prefers_cloud(gains: np.ndarray, margin: float) -> np.ndarray:
    """ECC_D+'s choice for each frame, were it offloaded: True = the full cloud (the device sends its JPEG), when the
    gate expects the cloud to beat the adapted route by more than `margin` (it costs more cloud compute); False =
    the adapted route (the device sends features)."""
    gains = np.asarray(gains)
    return gains[:, 1] - gains[:, 0] > margin


def three_way_priority(gains: np.ndarray, margin: float) -> np.ndarray:
    """ECC_D+ offload priority of each frame: the predicted gain of the route it would take (`prefers_cloud`), so
    that a margin above every gap ranks and routes exactly as ECC_D and one below every gap exactly as ECC_I."""
    gains = np.asarray(gains)
    return np.where(prefers_cloud(gains, margin), gains[:, 1], gains[:, 0])


def three_way_routes(gains: np.ndarray, offloaded: np.ndarray, margin: float) -> np.ndarray:
    """ECC_D+: where each frame is answered (ROUTE_CODES): offloaded frames as `prefers_cloud` says, the rest on the
    device."""
    codes = np.zeros(len(gains), dtype=np.int64)
    cloud = prefers_cloud(gains, margin)
    codes[offloaded] = np.where(cloud[offloaded], ROUTE_CODES[CLOUD], ROUTE_CODES[ADAPTED])
    return codes


def cheapest_payload(gains: np.ndarray, jpeg_deltas: np.ndarray, payload_bytes: np.ndarray,
                     margin: float) -> tuple[np.ndarray, np.ndarray]:
    """ECC_D+ over payload kinds: which payload an offloaded frame is sent as, so that it goes the cheapest way that
    gains, and the offload score of each frame.

    Kinds, in order: 0 = the feature payload (the adapted route: the cloud's tail on the edge's features), 1 + j =
    the letterboxed frame as a JPEG at the j-th quality (the full cloud on the decoded frame). Predicted gain over the
    edge of each kind: features = the gate's adapted gain; JPEG j = the gate's cloud gain minus `jpeg_deltas[j]`, the
    mean loss of the cloud's gain on that JPEG against the frame's own pixels (fitted on a validation split). Among
    the kinds predicted within `margin` of the frame's best, the one with the fewest bytes for this frame wins (ties:
    the higher predicted gain, then the lower kind). margin 0: the best predicted kind; a margin above every gap: the
    smallest payload.

    Args:
        gains: (N, 2) the gate's predicted gains in `GATE_ROUTES` order (adapted, cloud).
        jpeg_deltas: (Q,) per JPEG quality, what the gain loses on that JPEG.
        payload_bytes: (N, 1 + Q) each frame's payload size per kind (what the device encodes: features, JPEG j).
        margin: predicted gain (AP50-95) a frame may give up for fewer bytes, >= 0.

    Returns:
        kind: (N,) the chosen kind of each frame (where it goes if it is offloaded).
        score: (N,) its best predicted gain over the kinds, the offload ranking.

    Raises:
        ValueError: a negative margin, or shapes that do not agree.
    """
    gains, deltas = np.asarray(gains, dtype=np.float64), np.asarray(jpeg_deltas, dtype=np.float64).reshape(-1)
    payload_bytes = np.asarray(payload_bytes, dtype=np.float64)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if gains.ndim != 2 or gains.shape[1] != 2 or payload_bytes.shape != (len(gains), 1 + len(deltas)):
        raise ValueError(f"need gains (N, 2) and payload_bytes (N, 1 + {len(deltas)}), got {gains.shape} and "
                         f"{payload_bytes.shape}")
    predicted = np.column_stack([gains[:, 0], gains[:, 1:2] - deltas[None]])  # (N, 1 + Q)
    score = predicted.max(axis=1)
    cost = np.where(predicted >= score[:, None] - margin, payload_bytes, np.inf)
    cheapest = cost == cost.min(axis=1, keepdims=True)
    return np.argmax(np.where(cheapest, predicted, -np.inf), axis=1), score


def exit_probabilities(logits: np.ndarray) -> np.ndarray:
    """Softmax of the router's (N, 3) logits."""
    z = np.asarray(logits, dtype=np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def three_exit_choice(logits: np.ndarray, offload_ratio: float | None = None) -> np.ndarray:
    """Which exit answers each frame of a multi-exit edge (EXIT_CODES): MEANet's adaptive block.

    Without `offload_ratio`, the router's most likely exit. With it, exactly that share of frames, those most likely
    to be complex, goes to the cloud, and each remaining frame stops at the main exit unless the router rates it
    more likely hard than easy (then the extension answers). A frame sent to the main exit never runs the extension
    block or the cloud.
    """
    p = exit_probabilities(logits)
    if offload_ratio is None:
        return p.argmax(axis=1)
    return _exits(p, top_share_mask(p[:, EXIT_CODES[CLOUD]], offload_ratio))


def _exits(p: np.ndarray, complex_: np.ndarray) -> np.ndarray:
    """Exit codes: the cloud for the frames in `complex_`; of the rest, the extension for those the router rates
    more likely hard than easy, the main exit otherwise."""
    choice = np.where(p[:, EXIT_CODES[EXTENSION]] > p[:, EXIT_CODES[MAIN]], EXIT_CODES[EXTENSION], EXIT_CODES[MAIN])
    choice[complex_] = EXIT_CODES[CLOUD]
    return choice


@dataclass(frozen=True)
class Decision:
    """Where each frame of a batch is answered.

    Attributes:
        routes: (N,) route codes (`ecc_yolo.routes.ROUTE_CODES`).
        scores: (N,) what the offload decision ranked or thresholded: the predicted gain of the offload route (for
            ECC_D+ the larger of the two), or a multi-exit router's probability that the frame is complex.
    """

    routes: np.ndarray
    scores: np.ndarray

    def answered_by(self, route: str) -> np.ndarray:
        """Boolean (N,): the frames `route` answers."""
        return self.routes == ROUTE_CODES[route]

    @property
    def offloaded(self) -> np.ndarray:
        """Boolean (N,): the frames answered by the server (adapted or cloud)."""
        return self.answered_by(ADAPTED) | self.answered_by(CLOUD)


def decide(
    gains: np.ndarray | None = None,
    exit_logits: np.ndarray | None = None,
    *,
    threshold: float | None = None,
    ratio: float | None = None,
    controller: BudgetController | None = None,
    offload_to: str = ADAPTED,
    margin: float | None = None,
    force: np.ndarray | None = None,
) -> Decision:
    """The per-frame offload (and, on a multi-exit edge, exit) decision.

    Exactly one of `threshold`, `ratio` or `controller` says how many frames go to the cloud; a multi-exit edge may
    give none (its router's most likely exit decides).

    Args:
        gains: (N, 2) gains per offload route in `GATE_ROUTES` order (adapted, cloud): the gate's predictions, or
            true gains for an oracle. Ignored when `exit_logits` is given.
        exit_logits: (N, 3) a multi-exit edge's router logits (main, extension, cloud). The score is the
            probability that the frame is complex; frames not sent to the cloud stop at the extension exit when the
            router rates them more likely hard than easy, otherwise at the main exit. The cloud exit is the adapted
            route.
        threshold: offload the frames whose score is above this.
        ratio: offload exactly round(ratio * N) frames, those with the highest scores (ties broken by order).
        controller: a stream's budget: `controller.decide(score)` per frame (the caller then `record`s what it sent).
        offload_to: where an offloaded single-exit frame goes: "adapted" (ECC_D, score: its gain) or "cloud"
            (ECC_I, score: the cloud's gain).
        margin: ECC_D+ (three-way): an offloaded frame goes to the cloud when the cloud's gain beats the adapted one
            by more than `margin`, else to the adapted route; frames are ranked by the gain of the route they would
            take (`three_way_priority`).
        force: (N,) bool, frames offloaded whatever their score (a cue from outside the gate, e.g. a tracker that
            started or lost a track); they go where an offloaded frame goes.

    Raises:
        ValueError: not exactly one of threshold, ratio and controller (for a single-exit edge: at least one).
    """
    rules = sum(v is not None for v in (threshold, ratio, controller))
    if rules > 1 or (rules == 0 and exit_logits is None):
        raise ValueError("decide needs exactly one of threshold, ratio or controller")
    if exit_logits is not None:
        p = exit_probabilities(exit_logits)
        scores = p[:, EXIT_CODES[CLOUD]]
        if rules == 0:
            complex_ = p.argmax(axis=1) == EXIT_CODES[CLOUD]
        else:
            complex_ = _offloaded(scores, threshold, ratio, controller)
        complex_ = complex_ | force if force is not None else complex_
        return Decision(exits_to_routes(_exits(p, complex_)), scores)
    gains = np.asarray(gains)
    scores = three_way_priority(gains, margin) if margin is not None else gains[:, GATE_ROUTES.index(offload_to)]
    offloaded = _offloaded(scores, threshold, ratio, controller)
    offloaded = offloaded | force if force is not None else offloaded
    if margin is not None:
        return Decision(three_way_routes(gains, offloaded, margin), scores)
    return Decision(np.where(offloaded, ROUTE_CODES[offload_to], ROUTE_CODES[EDGE]), scores)


def _offloaded(scores: np.ndarray, threshold: float | None, ratio: float | None,
               controller: BudgetController | None) -> np.ndarray:
    if ratio is not None:
        return top_share_mask(scores, ratio)
    if controller is not None:
        return np.array([controller.decide(float(s)) for s in scores], dtype=bool)
    return offload_mask(scores, threshold)
