"""Feature payloads of a model (ecc_yolo.payload): what the device builds is what the cloud reads back."""

from __future__ import annotations

import torch

from ecc_yolo.edge import TorchEdge
from ecc_yolo.payload import payload_shapes, peek_input_shape, received_latents
from ecc_yolo.payload.codec import decode_features, encode_features


def test_payloads_round_trip_and_declare_their_input_size(tiny_ecc):
    x = torch.rand(2, 3, 96, 128)
    payloads = tiny_ecc.make_payload(x, image_shape=(480, 640))
    body = encode_features(payloads[0])
    assert peek_input_shape(body) == (96, 128)
    assert peek_input_shape(body[:10]) is None  # too short for a header: nothing to read
    shapes = payload_shapes(tiny_ecc, (96, 128))
    decoded = decode_features(body, tiny_ecc.fingerprint(), shapes)
    assert {t.layer: (*t.shape, t.bits) for t in decoded.tensors} == shapes
    latents = received_latents([decode_features(encode_features(p)) for p in payloads], "cpu", torch.float32)
    for layer, z in latents.items():
        assert z.shape[0] == 2 and torch.equal(z[1], torch.from_numpy(payloads[1].tensors[
            [t.layer for t in payloads[1].tensors].index(layer)].dequantize()))


def test_the_edge_runtime_and_the_model_build_the_same_bytes(tiny_ecc):
    # The runtime runs a fused edge (Conv+BN folded): the last float bits differ from an unfused model's, and a value
    # on a rounding boundary then takes the neighbouring 4-bit code (7 of 40 random tiny models did). The payload is
    # built the same way when the numbers are the same, so the model's edge is fused here too.
    tiny_ecc.edge.fuse(verbose=False)
    x = torch.rand(1, 3, 96, 96)
    edge = TorchEdge(tiny_ecc)
    from_runtime = edge.payloads(edge.run(x), (96, 96), (96, 96))[0]
    from_model = tiny_ecc.make_payload(x, image_shape=(96, 96))[0]
    assert encode_features(from_runtime) == encode_features(from_model)
