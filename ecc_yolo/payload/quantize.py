"""Quantisation of the adapters' latents: what a feature payload carries (codes, scale, offset per channel).

Training (the adapters' straight-through `transmit`), the device (`ecc_yolo.payload.make_payloads`) and the cloud
(`QuantizedTensor.dequantize` after `ecc_yolo.payload.codec.decode_features`) all use these two functions.
"""

from __future__ import annotations

import torch

MIN_SCALE = 2.0**-24  # quantisation step of a constant channel (all codes 0, value = offset); float16's smallest


def quantize(z: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image, per-channel asymmetric uniform quantisation of a (B, C, H, W) latent.

    Returns:
        codes: integer-valued float tensor in [0, 2**bits - 1], same shape as `z`.
        scale: (B, C) step size.
        offset: (B, C) value that code 0 stands for (the float form of a zero-point), so that
            `z ~= codes * scale + offset`.
    Scale and offset are float16-exact (rounded to float16 and back): the payload carries them as float16, so the
    cloud reconstructs exactly what training and in-process inference use.
    """
    levels = (1 << bits) - 1
    offset = z.amin(dim=(2, 3)).half().float()
    scale = ((z.amax(dim=(2, 3)) - offset) / levels).clamp_min(MIN_SCALE).half().float()
    codes = ((z - offset[..., None, None]) / scale[..., None, None]).round_().clamp_(0, levels)
    return codes, scale, offset


def dequantize(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Inverse of `quantize` (up to the rounding it did)."""
    return codes * scale[..., None, None] + offset[..., None, None]
