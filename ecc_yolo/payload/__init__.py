"""Feature payloads of an ECC model: building them on the device and reading them in the cloud, in one place.

The bytes are the codec's (`ecc_yolo.payload.codec`, the wire format); this module knows what an ECC model puts in them:
- `fingerprint`: the 16-byte identity of a model's weights and cfg that every payload carries;
- `payload_shapes`: the (C, H, W, bits) of the latents a payload must carry for a network input size;
- `make_payloads`: quantised latents -> one `FeaturePayload` per frame (the PyTorch model and the ONNX edge runtime
  both call it, so a server decodes their payloads alike);
- `peek_input_shape`: the network input size a received payload declares, read from its header before the body is
  decoded (the server checks tensor shapes against it);
- `received_latents`: a batch of decoded payloads -> dequantised latents, ready for the adapters' decoders.

It takes any object with an ECC model's `adapters`, `cut_strides`, `spec` and `state_dict` (an `ECCModel`) and
imports nothing of `ecc_yolo.nn.ecc_model`, which calls it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import numpy as np
import torch

from ecc_yolo.payload import codec
from ecc_yolo.payload.codec import FINGERPRINT_BYTES, FeaturePayload, QuantizedTensor
from ecc_yolo.payload.quantize import quantize


def fingerprint(model: Any) -> bytes:
    """16-byte identity of an ECC model's weights and cfg; payloads carry it so mismatched peers are refused.

    Hashes every tensor rounded to float16 (what checkpoints store), so a model and its saved checkpoint agree.
    """
    h = hashlib.sha256(json.dumps(model.spec.to_dict(), sort_keys=True, default=str).encode())
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        if value.is_floating_point():
            value = value.detach().to("cpu", torch.float16)
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()[:FINGERPRINT_BYTES]


def latent_bits(model: Any) -> dict[int, int]:
    """Cloud layer -> bits per transmitted value, of each adapter."""
    return {int(k): a.bits for k, a in model.adapters.items()}


def payload_shapes(model: Any, input_shape: tuple[int, int]) -> dict[int, tuple[int, int, int, int]]:
    """Cloud layer -> (C, H, W, bits) of the latents a feature payload carries for a network input size (pixels)."""
    shapes = {}
    for k, a in model.adapters.items():
        stride = model.cut_strides[int(k)]
        shapes[int(k)] = (a.latent_channels, input_shape[0] // stride, input_shape[1] // stride, a.bits)
    return shapes


def make_payloads(
    latents: dict[int, torch.Tensor],
    bits: dict[int, int],
    fingerprint: bytes,
    image_shape: tuple[int, int],
    input_shape: tuple[int, int],
) -> list[FeaturePayload]:
    """Device side: quantise a batch's float latents into one feature payload per frame.

    Args:
        latents: cloud layer -> (B, C, H, W) float latents of the adapters' encoders.
        bits: cloud layer -> bits per transmitted value.
        fingerprint: the model's `fingerprint`.
        image_shape: (h, w) of the original frames, pixels.
        input_shape: (h, w) of the letterboxed network input, pixels.
    """
    quantized = {k: quantize(z.detach().float(), bits[k]) for k, z in sorted(latents.items())}
    batch = next(iter(latents.values())).shape[0]
    out = []
    for i in range(batch):
        tensors = tuple(
            QuantizedTensor(layer=k, bits=bits[k], codes=codes[i].to("cpu", torch.uint8).numpy(),
                            scale=scale[i].float().cpu().numpy(), offset=offset[i].float().cpu().numpy())
            for k, (codes, scale, offset) in quantized.items()
        )
        out.append(FeaturePayload(fingerprint, tuple(image_shape), tuple(input_shape), tensors))
    return out


def peek_input_shape(body: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    """The network input size (h, w) a feature payload's header declares, without validating or decoding anything
    else; None when the body is too short to hold a header. `codec.decode_features` checks every field."""
    if len(body) < codec._HEADER.size:
        return None
    try:
        fields = codec._HEADER.unpack_from(body)
    except struct.error:
        return None
    _, _, _, _, _, _, _, nh, nw, *_ = fields  # magic, version, kind, codec, fingerprint, image h, w, input h, w, ...
    return int(nh), int(nw)


def received_latents(payloads: list[FeaturePayload], device: torch.device | str, dtype: torch.dtype
                     ) -> dict[int, torch.Tensor]:
    """Cloud side: dequantised latents of a batch of payloads (same input size and tensor order), keyed by cloud
    layer, as (B, C, H, W) tensors on `device`."""
    return {
        t.layer: torch.from_numpy(np.stack([pl.tensors[i].dequantize() for pl in payloads])).to(device, dtype)
        for i, t in enumerate(payloads[0].tensors)
    }
