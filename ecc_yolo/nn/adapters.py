"""Adapter heads: map an edge feature map into the space of a cloud cut tensor, through a quantised bottleneck.

Each adapter is split where the network is: the *encoder* runs on the device (a 1x1 projection to `bottleneck`
channels, or nothing), its output is quantised per channel to `bits` and sent; the *decoder* runs in the cloud
(`depth` conv layers) and predicts the cloud tensor in a per-channel whitened space, which fixed statistics of the
cloud's own features (`target_mean`, `target_std`, calibrated before knowledge adaptation) map back.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from ultralytics.nn.modules import Conv

from ecc_yolo.payload.quantize import dequantize, quantize
from ecc_yolo.spec import AdapterSpec

STD_FLOOR = 1e-3  # whitening never divides by less than this (dead channels)


class Adapter(nn.Module):
    """Edge feature (C_edge, H, W) -> quantised latent -> cloud tensor (C_cloud, H, W)."""

    def __init__(self, spec: AdapterSpec, edge_channels: int, cloud_channels: int):
        """Build encoder and decoder for one cut tensor.

        Args:
            spec: the adapter's cfg entry (depth, channels, bottleneck, bits).
            edge_channels: channels of the edge layer `spec.edge`.
            cloud_channels: channels of the cloud tensor `spec.cloud`.
        """
        super().__init__()
        self.bits = spec.bits
        self.cloud_layer, self.edge_layer = spec.cloud, spec.edge
        latent = spec.bottleneck or edge_channels
        self.latent_channels = latent
        self.encoder = nn.Conv2d(edge_channels, latent, 1) if spec.bottleneck else nn.Identity()
        hidden = spec.channels or cloud_channels
        if spec.depth == 1:
            layers = [nn.Conv2d(latent, cloud_channels, 1)]
        else:
            layers = [Conv(latent, hidden, 1)]
            layers += [Conv(hidden, hidden, 3) for _ in range(spec.depth - 2)]
            layers.append(nn.Conv2d(hidden, cloud_channels, 1))
        self.decoder = nn.Sequential(*layers)
        self.register_buffer("target_mean", torch.zeros(cloud_channels))
        self.register_buffer("target_std", torch.ones(cloud_channels))
        self.register_buffer("calibrated", torch.zeros(()))  # 1 once target statistics were measured

    def encode(self, edge_feature: torch.Tensor) -> torch.Tensor:
        """Device side: the float latent that gets quantised and sent."""
        return self.encoder(edge_feature)

    def quantize(self, latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise a latent to this adapter's bit width (what the payload carries)."""
        return quantize(latent, self.bits)

    def transmit(self, latent: torch.Tensor) -> torch.Tensor:
        """The latent as the cloud receives it: quantised then dequantised, with a straight-through gradient."""
        received = dequantize(*quantize(latent.detach(), self.bits))
        return latent + (received - latent).detach() if latent.requires_grad else received

    def predict_whitened(self, received: torch.Tensor) -> torch.Tensor:
        """Cloud side: decoder output in the whitened cloud-feature space."""
        return self.decoder(received)

    def unwhiten(self, whitened: torch.Tensor) -> torch.Tensor:
        """Whitened prediction -> cloud feature scale."""
        return whitened * self.target_std[:, None, None] + self.target_mean[:, None, None]

    def whiten(self, cloud_feature: torch.Tensor) -> torch.Tensor:
        """Cloud feature -> whitened space, where the feature-matching loss compares tensors of any scale fairly."""
        return (cloud_feature - self.target_mean[:, None, None]) / self.target_std[:, None, None]

    def decode(self, received: torch.Tensor) -> torch.Tensor:
        """Cloud side: received latent -> cloud tensor."""
        return self.unwhiten(self.predict_whitened(received))

    def forward(self, edge_feature: torch.Tensor) -> torch.Tensor:
        """Whole path, transmission simulated exactly as the payload codec does it."""
        return self.decode(self.transmit(self.encode(edge_feature)))

    @torch.no_grad()
    def set_target_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the whitening statistics of the cloud tensor this adapter predicts (per channel)."""
        self.target_mean.copy_(mean)
        self.target_std.copy_(std.clamp_min(STD_FLOOR))
        self.calibrated.fill_(1.0)


@torch.no_grad()
def calibrate_whitening(adapters: nn.ModuleDict, cloud_cuts: Callable[[torch.Tensor], dict[int, torch.Tensor]],
                        images: list[torch.Tensor]) -> None:
    """Measure the per-channel mean/std of the cloud's own cut tensors (`cloud_cuts(img)`, keyed by cloud layer) on
    some image batches (no labels needed) and fix them as the adapters' whitening statistics. The caller puts the
    cloud in eval mode."""
    stats: dict[int, tuple] = {}  # cloud layer -> (sum, sum of squares, count) per channel
    for img in images:
        for k, t in cloud_cuts(img).items():
            t = t.float().transpose(0, 1).flatten(1)  # (C, B*H*W)
            total, total_sq, n = stats.get(k, (0.0, 0.0, 0))
            stats[k] = (total + t.sum(1), total_sq + t.square().sum(1), n + t.shape[1])
    for k, (total, total_sq, n) in stats.items():
        mean = total / n
        std = (total_sq / n - mean.square()).clamp_min(0).sqrt()
        adapters[str(k)].set_target_stats(mean, std)


def whitening_calibrated(adapters: nn.ModuleDict) -> bool:
    """Whether every adapter has measured whitening statistics."""
    return all(bool(a.calibrated) for a in adapters.values())
