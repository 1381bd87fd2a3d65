"""Payload codec: the exact bytes a device sends to the cloud.

Two payload kinds:
- an image (ECC_I): a standard JPEG (or PNG) file, produced by `encode_jpeg` and checked by `decode_image`;
- features (ECC_A/ECC_D): the quantised adapter latents in the versioned binary format below.

Feature payload, format version 1 (all integers little-endian)::

    offset  size  field
    0       4     magic b"ECCF"
    4       2     version (u16) = 1
    6       1     kind (u8) = 1 (features)
    7       1     body codec (u8): 0 raw, 1 zlib/deflate
    8       16    model fingerprint (first 16 bytes of a SHA-256 over the model's weights)
    24      8     original image height, width; network input height, width (4 x u16, pixels)
    32      1     number of tensors T (u8, 1..MAX_TENSORS)
    33      3     reserved, zero
    36      4     body length before compression (u32)
    40      4     body length as sent (u32)
    44      ...   T tensor records: cloud layer (u16), bits (u8), reserved (u8), C, H, W (3 x u16),
                  reserved (u16), then scale float32[C] and offset float32[C]
    ...     ...   body: for each tensor in record order, its C*H*W codes (C, H, W order) packed MSB-first at
                  `bits` bits per value, padded to a whole byte
    end-4   4     CRC-32 of every byte before it

A value is reconstructed as `code * scale[c] + offset[c]`. Decoding checks every field, every length and the CRC
before it allocates or decompresses anything large, and raises `PayloadError` (only) on any defect. Nothing is
ever unpickled.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

MAGIC = b"ECCF"
FORMAT_VERSION = 1
KIND_FEATURES = 1
CODEC_RAW, CODEC_ZLIB = 0, 1
FINGERPRINT_BYTES = 16
MAX_TENSORS = 16
MAX_SIDE = 16384  # pixels, for image and input sizes
MAX_VALUES = 1 << 26  # per tensor: guards allocation before anything is decompressed
MAX_IMAGE_PIXELS = 50_000_000

_HEADER = struct.Struct("<4sHBB16s4HB3xII")
_RECORD = struct.Struct("<HBxHHH2x")
_CRC = struct.Struct("<I")


class PayloadError(ValueError):
    """A payload (features or image) that is malformed, truncated, oversized or meant for another model."""


@dataclass(frozen=True)
class QuantizedTensor:
    """One transmitted latent: integer codes with per-channel dequantisation parameters.

    Attributes:
        layer: index of the cloud cut tensor this latent stands for.
        bits: bits per code (1..8).
        codes: uint8 array (C, H, W), every value < 2**bits.
        scale: float32 (C,) step per channel.
        offset: float32 (C,) value of code 0 per channel.
    """

    layer: int
    bits: int
    codes: np.ndarray
    scale: np.ndarray
    offset: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W)."""
        return tuple(self.codes.shape)

    def dequantize(self) -> np.ndarray:
        """float32 (C, H, W) values."""
        return self.codes.astype(np.float32) * self.scale[:, None, None] + self.offset[:, None, None]


@dataclass(frozen=True)
class FeaturePayload:
    """Everything a feature payload carries."""

    fingerprint: bytes
    image_shape: tuple[int, int]  # original frame (h, w), pixels
    input_shape: tuple[int, int]  # letterboxed network input (h, w), pixels
    tensors: tuple[QuantizedTensor, ...]


def packed_size(n_values: int, bits: int) -> int:
    """Bytes that `n_values` codes of `bits` bits take once packed."""
    return (n_values * bits + 7) // 8


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Pack uint8 codes (each < 2**bits) MSB-first at `bits` bits per value."""
    flat = np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1)
    if bits == 8:
        return flat.tobytes()
    planes = np.unpackbits(flat[:, None], axis=1)[:, 8 - bits :]
    return np.packbits(planes.reshape(-1)).tobytes()


def unpack_codes(buf: bytes, bits: int, n_values: int) -> np.ndarray:
    """Inverse of `pack_codes`: `n_values` uint8 codes."""
    raw = np.frombuffer(buf, dtype=np.uint8)
    if bits == 8:
        return raw[:n_values].copy()
    planes = np.unpackbits(raw)[: n_values * bits].reshape(n_values, bits)
    full = np.zeros((n_values, 8), dtype=np.uint8)
    full[:, 8 - bits :] = planes
    return np.packbits(full, axis=1).reshape(-1)


def encode_features(payload: FeaturePayload, level: int = 6) -> bytes:
    """Serialise a feature payload (zlib body at `level`; level 0 sends the body raw)."""
    if len(payload.fingerprint) != FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
    if not 1 <= len(payload.tensors) <= MAX_TENSORS:
        raise ValueError(f"a payload carries 1..{MAX_TENSORS} tensors, got {len(payload.tensors)}")
    records, bodies = [], []
    for t in payload.tensors:
        c, h, w = t.shape
        if not 1 <= t.bits <= 8 or (t.codes.size and int(t.codes.max()) >= 1 << t.bits):
            raise ValueError(f"tensor {t.layer}: codes do not fit in {t.bits} bits")
        records.append(_RECORD.pack(t.layer, t.bits, c, h, w))
        records.append(np.asarray(t.scale, "<f4").tobytes() + np.asarray(t.offset, "<f4").tobytes())
        bodies.append(pack_codes(t.codes, t.bits))
    body = b"".join(bodies)
    sent = zlib.compress(body, level) if level else body
    header = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        KIND_FEATURES,
        CODEC_ZLIB if level else CODEC_RAW,
        payload.fingerprint,
        *payload.image_shape,
        *payload.input_shape,
        len(payload.tensors),
        len(body),
        len(sent),
    )
    data = header + b"".join(records) + sent
    return data + _CRC.pack(zlib.crc32(data))


def decode_features(
    data: bytes,
    expected_fingerprint: bytes | None = None,
    expected_shapes: dict[int, tuple[int, int, int, int]] | None = None,
    max_bytes: int = 64 << 20,
) -> FeaturePayload:
    """Parse and validate a feature payload.

    Args:
        data: the received bytes.
        expected_fingerprint: refuse payloads made for another model.
        expected_shapes: cloud layer -> (C, H, W, bits) the receiving model needs, for this payload's input size;
            the payload must carry exactly these tensors.
        max_bytes: refuse larger payloads outright.

    Raises:
        PayloadError: on any defect, with a message saying which.
    """
    try:
        return _decode_features(bytes(data), expected_fingerprint, expected_shapes, max_bytes)
    except PayloadError:
        raise
    except (struct.error, zlib.error, ValueError, TypeError, OverflowError, MemoryError) as e:
        raise PayloadError(f"malformed payload: {e}") from None


def _decode_features(data, expected_fingerprint, expected_shapes, max_bytes) -> FeaturePayload:
    n = len(data)
    if n > max_bytes:
        raise PayloadError(f"payload of {n} bytes exceeds the {max_bytes}-byte limit")
    if n < _HEADER.size + _CRC.size:
        raise PayloadError(f"payload truncated: {n} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, kind, codec, fingerprint, ih, iw, nh, nw, count, raw_len, sent_len = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PayloadError("not an ECC feature payload (bad magic)")
    if version != FORMAT_VERSION:
        raise PayloadError(f"unsupported payload version {version} (this build reads version {FORMAT_VERSION})")
    if kind != KIND_FEATURES:
        raise PayloadError(f"unsupported payload kind {kind}")
    if codec not in (CODEC_RAW, CODEC_ZLIB):
        raise PayloadError(f"unknown body codec {codec}")
    (crc,) = _CRC.unpack_from(data, n - _CRC.size)
    if zlib.crc32(data[: n - _CRC.size]) != crc:
        raise PayloadError("checksum mismatch: payload corrupted or truncated")
    if expected_fingerprint is not None and fingerprint != expected_fingerprint:
        raise PayloadError(
            f"model fingerprint mismatch: payload for {fingerprint.hex()}, this model is {expected_fingerprint.hex()}"
        )
    for name, side in (("image height", ih), ("image width", iw), ("input height", nh), ("input width", nw)):
        if not 0 < side <= MAX_SIDE:
            raise PayloadError(f"{name} {side} out of range 1..{MAX_SIDE}")
    if not 1 <= count <= MAX_TENSORS:
        raise PayloadError(f"tensor count {count} out of range 1..{MAX_TENSORS}")

    pos, specs = _HEADER.size, []
    for _ in range(count):
        if pos + _RECORD.size > n - _CRC.size:
            raise PayloadError("payload truncated inside the tensor records")
        layer, bits, c, h, w = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        if not 1 <= bits <= 8:
            raise PayloadError(f"tensor {layer}: bits {bits} out of range 1..8")
        if min(c, h, w) < 1 or c * h * w > MAX_VALUES:
            raise PayloadError(f"tensor {layer}: shape ({c}, {h}, {w}) out of range")
        end = pos + 8 * c
        if end > n - _CRC.size:
            raise PayloadError(f"tensor {layer}: payload truncated inside its scales")
        scale = np.frombuffer(data, "<f4", c, pos).astype(np.float32)
        offset = np.frombuffer(data, "<f4", c, pos + 4 * c).astype(np.float32)
        if not (np.isfinite(scale).all() and np.isfinite(offset).all() and (scale > 0).all()):
            raise PayloadError(f"tensor {layer}: non-finite or non-positive quantisation parameters")
        pos = end
        specs.append((layer, bits, c, h, w, scale, offset))
    if len({s[0] for s in specs}) != count:
        raise PayloadError("duplicate tensor layers")
    expected_raw = sum(packed_size(c * h * w, bits) for _, bits, c, h, w, _, _ in specs)
    if raw_len != expected_raw:
        raise PayloadError(f"body length {raw_len} does not match the tensor records ({expected_raw})")
    if pos + sent_len + _CRC.size != n:
        raise PayloadError(f"payload length {n} does not match its header ({pos + sent_len + _CRC.size})")
    if expected_shapes is not None:
        got = {layer: (c, h, w, bits) for layer, bits, c, h, w, _, _ in specs}
        if got != expected_shapes:
            raise PayloadError(f"tensor shapes {got} do not match what this model needs ({expected_shapes})")

    sent = data[pos : pos + sent_len]
    if codec == CODEC_RAW:
        body = sent
    else:
        inflater = zlib.decompressobj()
        body = inflater.decompress(sent, raw_len + 1)  # never inflate past what the records promise
        if not inflater.eof or inflater.unconsumed_tail or inflater.unused_data:
            raise PayloadError("compressed body does not end where the header says")
    if len(body) != raw_len:
        raise PayloadError(f"body has {len(body)} bytes after decompression, header says {raw_len}")

    tensors, pos = [], 0
    for layer, bits, c, h, w, scale, offset in specs:
        size = packed_size(c * h * w, bits)
        codes = unpack_codes(body[pos : pos + size], bits, c * h * w).reshape(c, h, w)
        tensors.append(QuantizedTensor(layer, bits, codes, scale, offset))
        pos += size
    return FeaturePayload(fingerprint, (ih, iw), (nh, nw), tuple(tensors))


def encode_jpeg(image_bgr: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of a BGR frame (what ECC_I sends)."""
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a received JPEG/PNG into a BGR array, refusing anything that is not a reasonable image.

    Raises:
        PayloadError: not a JPEG/PNG, undecodable, or larger than `max_pixels`.
    """
    head = bytes(data[:8])
    if not (head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n")):
        raise PayloadError("image body must be a JPEG or PNG file")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        # Read the size from the header first so a decompression bomb is refused before it is decoded.
        shape = _image_size(bytes(data))
    except (struct.error, IndexError, ValueError):
        shape = None
    if shape is None:
        raise PayloadError("image header is truncated or corrupt")
    if shape[0] * shape[1] > max_pixels:
        raise PayloadError(f"image of {shape[1]}x{shape[0]} pixels exceeds the {max_pixels}-pixel limit")
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise PayloadError("image could not be decoded")
    return image


def _image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG IHDR or a JPEG SOF marker, without decoding pixels."""
    if data.startswith(b"\x89PNG"):
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        w, h = struct.unpack(">II", data[16:24])
        return h, w
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return h, w
        pos += 2 + length
    return None
