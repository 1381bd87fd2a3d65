"""The offload decision: where a frame is answered.

The gate (`ecc_yolo.nn.gate`) predicts, per frame, the gain in AP50-95 that each offload route would bring over the
edge. This module turns predictions into decisions:
- `offload_mask`: offload when the predicted gain exceeds a threshold (what `route=auto` does, threshold = the
  model's `gate_threshold`);
- `top_share_mask` / `threshold_for_ratio`: evaluate or calibrate a router at a given offload ratio;
- `BudgetController`: move the threshold online so that a stream respects an offload ratio or a bit rate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np


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
    threshold: float = 0.05
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


ROUTE_CODES = {"edge": 0, "adapted": 1, "cloud": 2, "extension": 3}  # how evaluation encodes where a frame was answered


def three_way_priority(gains: np.ndarray) -> np.ndarray:
    """ECC_D+ offload priority of each frame: the larger of its predicted gains (adapted, cloud)."""
    return np.asarray(gains).max(axis=1)


def three_way_routes(gains: np.ndarray, offloaded: np.ndarray, margin: float) -> np.ndarray:
    """ECC_D+: where each frame is answered (ROUTE_CODES). An offloaded frame goes to the full cloud (the device
    sends its JPEG) when the gate expects the cloud to beat the adapted route by more than `margin` (it costs more
    cloud compute and more bytes), otherwise to the adapted route."""
    gains = np.asarray(gains)
    codes = np.zeros(len(gains), dtype=np.int64)
    prefer_cloud = gains[:, 1] - gains[:, 0] > margin
    codes[offloaded] = np.where(prefer_cloud[offloaded], ROUTE_CODES["cloud"], ROUTE_CODES["adapted"])
    return codes


EXIT_CODES = {"main": 0, "extension": 1, "cloud": 2}  # a multi-exit edge's exits, in the router's output order


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
    choice = np.where(p[:, 1] > p[:, 0], EXIT_CODES["extension"], EXIT_CODES["main"])
    choice[top_share_mask(p[:, 2], offload_ratio)] = EXIT_CODES["cloud"]
    return choice
