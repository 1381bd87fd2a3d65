"""Decision heads on the device: the offload gate and, for multi-exit edges, the exit router (MEANet's adaptive
block).

Both see the same inputs: pooled edge feature maps and statistics of the edge detector's own class scores.
- `OffloadGate` predicts one gain per offload route (`GATE_ROUTES`): how much answering the frame with that route
  would raise mAP50-95 over the edge (`ecc_yolo.quality`).
- `ExitRouter` classifies the frame as easy / hard / complex (`EXITS`: answered by the main exit, by the extension
  exit, or by the cloud).
The rules that turn their outputs into decisions live in `ecc_yolo.policy`.
"""

from __future__ import annotations

import torch
from torch import nn

from ecc_yolo.routes import EXITS, GATE_ROUTES  # the order of the gate's and the router's outputs

SCORE_THRESHOLDS = (0.05, 0.1, 0.25, 0.5, 0.75)
TOP_K = (1, 10, 50)
N_STATS = len(SCORE_THRESHOLDS) + len(TOP_K) + 1


def head_scores(head_output: object) -> torch.Tensor:
    """Per-anchor max class probability (B, A) from a Detect head output in any mode (train, eval, end-to-end)."""
    preds = head_output[1] if isinstance(head_output, tuple) else head_output
    if "one2many" in preds:  # end-to-end head: one2many unless fusion removed it
        preds = preds["one2many"] if "scores" in preds["one2many"] else preds["one2one"]
    return preds["scores"].detach().float().sigmoid().amax(dim=1)


def score_statistics(scores: torch.Tensor) -> torch.Tensor:
    """(B, N_STATS) summary of (B, A) anchor scores: counts over thresholds, top-k means, total ambiguity."""
    counts = [torch.log1p((scores > t).sum(1).float()) for t in SCORE_THRESHOLDS]
    top = scores.topk(min(max(TOP_K), scores.shape[1]), dim=1).values
    tops = [top[:, : min(k, top.shape[1])].mean(1) for k in TOP_K]
    ambiguity = torch.log1p((scores * (1 - scores)).sum(1))
    return torch.stack([*counts, *tops, ambiguity], dim=1)


class PooledHead(nn.Module):
    """MLP on [avg-pool, max-pool of each input feature map, score statistics] -> `outputs` values."""

    def __init__(self, channels: list[int], hidden: int, outputs: int):
        """Build the head.

        Args:
            channels: channels of each edge feature map the head reads.
            hidden: width of the hidden layer.
            outputs: number of outputs.
        """
        super().__init__()
        n_in = 2 * sum(channels) + N_STATS
        self.norm = nn.LayerNorm(n_in)
        self.mlp = nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, outputs))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, feats: list[torch.Tensor], head_output: object) -> torch.Tensor:
        """(B, outputs) from the feature maps and the edge head's output."""
        pooled = [torch.cat([f.float().mean((2, 3)), f.float().amax((2, 3))], 1) for f in feats]
        x = torch.cat([*pooled, score_statistics(head_scores(head_output))], 1)
        return self.mlp(self.norm(x))


class OffloadGate(PooledHead):
    """Predicted gain of each offload route (GATE_ROUTES), (B, 2)."""

    def __init__(self, channels: list[int], hidden: int = 64):
        """Build the gate for edge feature maps of the given channels."""
        super().__init__(channels, hidden, len(GATE_ROUTES))


class ExitRouter(PooledHead):
    """Logits of the three exits (EXITS), (B, 3): MEANet's adaptive block."""

    def __init__(self, channels: list[int], hidden: int = 64):
        """Build the router for edge feature maps of the given channels."""
        super().__init__(channels, hidden, len(EXITS))
