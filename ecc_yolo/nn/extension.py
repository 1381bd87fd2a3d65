"""MEANet's extension block: extra layers on the device that continue from the edge's features and end in a
detection head of their own, a second and stronger exit. The main exit is the edge detector's own head; frames the
router deems hard are answered here, without contacting the cloud."""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules import Conv, Detect


class ExtensionBlock(nn.Module):
    """Per feature level `depth` 3x3 convs of width `channels`, then a Detect head over all levels.

    `model` holds the layers with the head last, the layout Ultralytics' detection loss reads (`model.model[-1]`).
    """

    def __init__(self, in_channels: list[int], strides: torch.Tensor, nc: int, depth: int = 2, channels: int = 64,
                 reg_max: int = 16):
        """Build the block.

        Args:
            in_channels: channels of each edge feature map it reads (one per detection level).
            strides: stride of each level (pixels), as the edge's Detect head has them.
            nc: number of classes.
            depth: conv layers per level.
            channels: width of those layers.
            reg_max: DFL bins of the head (the edge head's, so outputs decode the same way).
        """
        super().__init__()
        blocks = [nn.Sequential(*(Conv(c if i == 0 else channels, channels, 3) for i in range(depth)))
                  for c in in_channels]
        head = Detect(nc=nc, reg_max=reg_max, ch=[channels] * len(in_channels))
        head.stride = strides.detach().clone().float()
        head.bias_init()
        self.model = nn.ModuleList([*blocks, head])

    def forward(self, feats: list[torch.Tensor]):
        """Detect head output (train: raw dict; eval: (decoded, raw)) from the edge feature maps."""
        return self.model[-1]([block(f) for block, f in zip(self.model[:-1], feats)])

    def _apply(self, fn, *args, **kwargs):
        """Move/cast tensors, including the head's strides and anchors (plain attributes, as in BaseModel)."""
        super()._apply(fn, *args, **kwargs)
        head = self.model[-1]
        head.stride, head.anchors, head.strides = fn(head.stride), fn(head.anchors), fn(head.strides)
        return self
