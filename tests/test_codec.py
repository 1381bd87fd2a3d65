"""Payload codec: round trips, exactness of the device/cloud split, and fuzzing of malformed payloads."""

from __future__ import annotations

import dataclasses
import struct
import zlib

import cv2
import numpy as np
import pytest
import torch

from ecc_yolo.payload.codec import (
    MAX_LATENT,
    FeaturePayload,
    PayloadError,
    QuantizedTensor,
    decode_features,
    decode_image,
    encode_features,
    encode_jpeg,
    image_size,
    pack_codes,
    unpack_codes,
)

FP = bytes(range(16))


def _payload(rng: np.random.Generator, bits=(4, 8, 2)) -> FeaturePayload:
    tensors = []
    for layer, b in zip((4, 6, 10), bits):
        c, h, w = int(rng.integers(1, 9)), int(rng.integers(1, 12)), int(rng.integers(1, 12))
        tensors.append(
            QuantizedTensor(
                layer=layer,
                bits=b,
                codes=rng.integers(0, 1 << b, (c, h, w), dtype=np.uint8),
                scale=rng.uniform(0.01, 1, c).astype(np.float16).astype(np.float32),  # float16 on the wire
                offset=rng.normal(size=c).astype(np.float16).astype(np.float32),
            )
        )
    return FeaturePayload(FP, (480, 640), (256, 320), tuple(tensors))


def _shapes(p: FeaturePayload):
    return {t.layer: (*t.shape, t.bits) for t in p.tensors}


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_unpack_every_bit_width(bits):
    codes = np.random.default_rng(bits).integers(0, 1 << bits, 1001, dtype=np.uint8)
    packed = pack_codes(codes, bits)
    assert len(packed) == (1001 * bits + 7) // 8
    assert np.array_equal(unpack_codes(packed, bits, 1001), codes)


CODERS = ("raw", "deflate", "range", "auto")


@pytest.mark.parametrize("coder", CODERS)
def test_round_trip(coder):
    p = _payload(np.random.default_rng(1))
    data = encode_features(p, coder)
    assert data[7] == {"raw": 0, "deflate": 1, "range": 2}.get(coder, data[7])  # the body codec byte
    q = decode_features(data, expected_fingerprint=FP, expected_shapes=_shapes(p))
    assert q.fingerprint == FP and q.image_shape == (480, 640) and q.input_shape == (256, 320)
    for a, b in zip(p.tensors, q.tensors):
        assert (a.layer, a.bits) == (b.layer, b.bits)
        assert np.array_equal(a.codes, b.codes)
        assert np.array_equal(a.scale, b.scale) and np.array_equal(a.offset, b.offset)


def _sealed(body: bytes) -> bytes:
    """`body` followed by its own valid CRC: only the field and length checks can refuse it, not the checksum."""
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


def _refused_by_a_field_check(data: bytes) -> str:
    """Decode `data`, which must be refused by a named check: not the checksum, and not the catch-all that turns a
    numpy/struct error (a check that is missing) into "malformed payload"."""
    with pytest.raises(PayloadError) as e:
        decode_features(data)
    message = str(e.value)
    assert "checksum" not in message and not message.startswith("malformed payload"), message
    return message


@pytest.mark.parametrize("coder", ("raw", "deflate", "range"))
def test_every_truncation_is_refused_by_the_lengths_not_only_the_crc(coder):
    data = encode_features(_payload(np.random.default_rng(2)), coder)
    for n in range(len(data)):  # plain truncation: the CRC alone may catch these
        with pytest.raises(PayloadError):
            decode_features(data[:n])
    for n in range(len(data) - 4):  # truncated, then given a valid CRC: a length check must catch each one
        _refused_by_a_field_check(_sealed(data[:n]))


def test_bit_flips_in_header_and_records_are_refused_or_canonical():
    """A flipped bit in the header or the tensor records, with the CRC fixed, is either refused by a named check or
    yields a payload that is exactly what the bytes say (it re-encodes to the same bytes) and in range."""
    rng = np.random.default_rng(3)
    p = _payload(rng)
    data = encode_features(p, "raw")
    fields_end = 44 + sum(12 + 4 * t.shape[0] for t in p.tensors)  # header + records (codec docstring)
    accepted = refused = 0
    for _ in range(600):
        corrupt = bytearray(data[:-4])
        for pos in rng.integers(0, fields_end, int(rng.integers(1, 3))):
            corrupt[pos] ^= 1 << int(rng.integers(0, 8))
        if corrupt == data[:-4]:
            continue
        try:
            q = decode_features(_sealed(corrupt))
        except PayloadError as e:
            assert "checksum" not in str(e) and not str(e).startswith("malformed payload"), str(e)
            refused += 1
            continue
        accepted += 1  # e.g. a fingerprint bit, a scale's low mantissa bit: another valid payload
        assert encode_features(q, "raw")[:-4] == bytes(corrupt)
        for t in q.tensors:
            values = t.dequantize()
            assert np.isfinite(values).all() and (t.scale > 0).all() and np.abs(values).max() <= MAX_LATENT
    assert refused > 100 and accepted > 10, (refused, accepted)


def test_quantisation_parameters_out_of_range_are_refused():
    p = _payload(np.random.default_rng(10))
    t = p.tensors[0]
    for scale, offset, message in [
        (np.inf, 0.0, "non-finite"), (np.nan, 0.0, "non-finite"), (0.0, 0.0, "non-positive"),
        (-1.0, 0.0, "non-positive"), (1.0, np.nan, "non-finite"),
        (1e30, 0.0, "non-finite"), (1.0, -1e6, "non-finite"),  # beyond float16: infinite on the wire
        (5000.0, 0.0, "beyond"),  # a 4-bit tensor: offset 0 is fine, but code 15 would be 75000
    ]:
        bad = dataclasses.replace(t, scale=np.full_like(t.scale, scale), offset=np.full_like(t.offset, offset))
        data = encode_features(dataclasses.replace(p, tensors=(bad, *p.tensors[1:])))
        with pytest.raises(PayloadError, match=message):
            decode_features(data)


def _with_header(data: bytes, offset: int, fmt: str, value) -> bytes:
    """Rewrite one header field and fix the CRC, so that only the field's own validation can refuse it."""
    body = bytearray(data[:-4])
    struct.pack_into(fmt, body, offset, value)
    return bytes(body) + struct.pack("<I", zlib.crc32(bytes(body)))


@pytest.mark.parametrize(
    "offset, fmt, value, message",
    [
        (0, "<4s", b"JUNK", "bad magic"),
        (4, "<H", 1, "unsupported payload version 1"),  # float32 scales, before the range coder
        (6, "<B", 7, "kind"),
        (7, "<B", 9, "codec"),
        (24, "<H", 0, "image height"),
        (30, "<H", 20000, "input width"),
        (32, "<B", 0, "tensor count"),
        (32, "<B", 200, "tensor count"),
        (32, "<B", 4, "truncated inside the tensor records|does not match|out of range|reserved"),
        (36, "<I", 12345, "body length"),
        (40, "<I", 1, "payload length"),
        (44 + 2, "<B", 0, "bits 0"),
        (44 + 4, "<H", 0, "shape"),
        (44 + 6, "<H", 60000, "shape|truncated|body length"),
    ],
)
def test_header_fields_are_validated(offset, fmt, value, message):
    data = encode_features(_payload(np.random.default_rng(4)))
    with pytest.raises(PayloadError, match=message):
        decode_features(_with_header(data, offset, fmt, value))


def test_random_header_field_values_never_escape_as_another_error():
    rng = np.random.default_rng(5)
    data = encode_features(_payload(rng))
    fields = [(4, "<H"), (6, "<B"), (7, "<B"), (24, "<H"), (26, "<H"), (32, "<B"), (36, "<I"), (40, "<I"),
              (44, "<H"), (46, "<B"), (48, "<H"), (50, "<H"), (52, "<H")]
    for _ in range(300):
        offset, fmt = fields[int(rng.integers(len(fields)))]
        value = int(rng.integers(0, 1 << (8 * struct.calcsize(fmt))))
        try:
            decode_features(_with_header(data, offset, fmt, value))
        except PayloadError:
            pass


def test_wrong_fingerprint_shape_and_size_are_refused():
    p = _payload(np.random.default_rng(6))
    data = encode_features(p)
    with pytest.raises(PayloadError, match="fingerprint mismatch"):
        decode_features(data, expected_fingerprint=b"\x00" * 16)
    wrong = _shapes(p)
    wrong[4] = (99, 1, 1, 4)
    with pytest.raises(PayloadError, match="do not match what this model needs"):
        decode_features(data, expected_shapes=wrong)
    with pytest.raises(PayloadError, match="exceeds"):
        decode_features(data, max_bytes=len(data) - 1)
    for junk in (b"", b"\x00" * 100, np.random.default_rng(7).bytes(5000)):
        with pytest.raises(PayloadError):
            decode_features(junk)


def test_decompression_bomb_is_refused_before_inflating():
    p = _payload(np.random.default_rng(8), bits=(1, 1, 1))
    data = bytearray(encode_features(p, "raw"))
    # Claim a small body but send a highly compressible huge one.
    bomb = zlib.compress(b"\x00" * (50 << 20))
    header_len = len(data) - 4 - sum((t.codes.size * t.bits + 7) // 8 for t in p.tensors)
    forged = bytearray(data[:header_len]) + bomb
    struct.pack_into("<B", forged, 7, 1)  # zlib codec
    struct.pack_into("<I", forged, 40, len(bomb))
    forged += struct.pack("<I", zlib.crc32(bytes(forged)))
    with pytest.raises(PayloadError, match="does not end where the header says"):
        decode_features(bytes(forged))


def test_device_cloud_split_through_bytes_equals_the_adapted_route(tiny_ecc, images):
    """Edge -> payload bytes -> cloud decode -> tail gives exactly the in-process adapted route."""
    with torch.no_grad():
        payloads = tiny_ecc.make_payload(images, image_shape=(128, 128))
        wire = [encode_features(p) for p in payloads]
        fingerprint = tiny_ecc.fingerprint()
        shapes = tiny_ecc.payload_shapes((128, 128))
        received = [decode_features(w, expected_fingerprint=fingerprint, expected_shapes=shapes) for w in wire]
        remote = tiny_ecc.cloud_tail(tiny_ecc.decode(tiny_ecc.received_latents(received)))[0]
        local = tiny_ecc.adapted_forward(images)[0]
    assert (remote - local).abs().max().item() <= 1e-5


def test_images_are_checked_before_decoding():
    frame = np.random.default_rng(9).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    jpeg = encode_jpeg(frame)
    assert decode_image(jpeg).shape == (48, 64, 3) and image_size(jpeg) == (48, 64)
    ok, png = cv2.imencode(".png", frame)
    assert decode_image(png.tobytes()).shape == (48, 64, 3) and image_size(png.tobytes()) == (48, 64)
    ihdr = struct.pack(">IIBBBBB", 100000, 100000, 8, 2, 0, 0, 0)
    huge_png = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr
                + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)))
    for bad, message in [
        (b"hello world", "JPEG or PNG"),
        (jpeg[:20], "truncated before its first scan"),
        (huge_png, "exceeds the limits"),
    ]:
        with pytest.raises(PayloadError, match=message):
            decode_image(bad)
    with pytest.raises(PayloadError, match="exceeds the limits"):  # the caps are the caller's
        decode_image(jpeg, max_pixels=48 * 64 - 1)
    with pytest.raises(PayloadError, match="exceeds the limits"):
        decode_image(jpeg, max_side=63)


@pytest.mark.parametrize("bits", range(1, 9))
def test_the_range_coder_round_trips_every_bit_width_exactly(bits):
    rng = np.random.default_rng(100 + bits)
    peaked = np.clip(np.round(rng.normal((1 << bits) / 2, (1 << bits) / 8, (8, 10, 10))), 0, (1 << bits) - 1)
    for codes in (peaked.astype(np.uint8), rng.integers(0, 1 << bits, (3, 7, 5), dtype=np.uint8),
                  np.zeros((2, 4, 4), np.uint8), np.full((1, 1, 1), (1 << bits) - 1, np.uint8)):
        t = QuantizedTensor(4, bits, codes, np.ones(codes.shape[0], np.float32), np.zeros(codes.shape[0], np.float32))
        p = FeaturePayload(FP, (64, 64), (64, 64), (t,))
        q = decode_features(encode_features(p, "range"))
        assert np.array_equal(q.tensors[0].codes, codes)


def test_auto_sends_the_smallest_body_and_the_range_coder_wins_on_peaked_codes():
    rng = np.random.default_rng(11)
    codes = np.clip(np.round(rng.normal(8, 1.0, (16, 20, 20))), 0, 15).astype(np.uint8)  # ~2 bits of entropy
    t = QuantizedTensor(4, 4, codes, np.ones(16, np.float32), np.zeros(16, np.float32))
    p = FeaturePayload(FP, (160, 160), (160, 160), (t,))
    sizes = {c: len(encode_features(p, c)) for c in ("raw", "deflate", "range")}
    assert len(encode_features(p)) == min(sizes.values()) == sizes["range"] < 0.7 * sizes["raw"], sizes


def test_corrupt_range_bodies_are_refused_or_decode_within_range():
    p = _payload(np.random.default_rng(12))
    data = encode_features(p, "range")
    body_start = 44 + sum(12 + 4 * t.shape[0] for t in p.tensors)
    model_bytes = 3 * p.tensors[0].shape[0]  # a u8 mean, weight and log-std per channel
    many_words = bytearray(data[:-4])
    struct.pack_into("<I", many_words, body_start + model_bytes, 1 << 30)  # more words than the body holds
    assert "truncated" in _refused_by_a_field_check(_sealed(many_words))
    rng = np.random.default_rng(13)
    for _ in range(200):  # flipped bits in the words: another valid payload, codes within their bit width
        corrupt = bytearray(data[:-4])
        pos = int(rng.integers(body_start, len(corrupt)))
        corrupt[pos] ^= 1 << int(rng.integers(0, 8))
        try:
            q = decode_features(_sealed(corrupt))
        except PayloadError as e:
            assert "checksum" not in str(e) and not str(e).startswith("malformed payload"), str(e)
            continue
        assert all(int(t.codes.max(initial=0)) < 1 << t.bits for t in q.tensors)


def test_quantisation_parameters_are_float16_exact_so_the_cloud_sees_what_training_saw():
    from ecc_yolo.payload.quantize import dequantize, quantize

    z = torch.randn(2, 5, 6, 6) * 3 + 1
    codes, scale, offset = quantize(z, 4)
    assert torch.equal(scale, scale.half().float()) and torch.equal(offset, offset.half().float())
    t = QuantizedTensor(4, 4, codes[0].to(torch.uint8).numpy(), scale[0].numpy(), offset[0].numpy())
    received = decode_features(encode_features(FeaturePayload(FP, (6, 6), (6, 6), (t,)))).tensors[0]
    assert np.array_equal(received.dequantize(), dequantize(codes, scale, offset)[0].numpy())
