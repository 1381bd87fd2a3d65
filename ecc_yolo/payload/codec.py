"""Payload codec: the exact bytes a device sends to the cloud.

Two payload kinds:
- an image (ECC_I): a standard JPEG (or PNG) file, produced by `encode_jpeg` and checked by `decode_image`;
- features (ECC_A/ECC_D): the quantised adapter latents in the versioned binary format below.

Feature payload, format version 2 (all integers little-endian)::

    offset  size  field
    0       4     magic b"ECCF"
    4       2     version (u16) = 2
    6       1     kind (u8) = 1 (features)
    7       1     body codec (u8): 0 raw, 1 zlib/deflate, 2 range (see below)
    8       16    model fingerprint (first 16 bytes of a SHA-256 over the model's weights)
    24      8     original image height, width; network input height, width (4 x u16, pixels)
    32      1     number of tensors T (u8, 1..MAX_TENSORS)
    33      3     reserved, zero
    36      4     body length before compression (u32)
    40      4     body length as sent (u32)
    44      ...   T tensor records: cloud layer (u16), bits (u8), reserved (u8), C, H, W (3 x u16),
                  reserved (u16), then scale float16[C] and offset float16[C]
    ...     ...   body: for each tensor in record order, its C*H*W codes (C, H, W order) packed MSB-first at
                  `bits` bits per value, padded to a whole byte ("body length before compression" is this size)
    end-4   4     CRC-32 of every byte before it

Body codecs: raw sends the body as is; zlib deflates it; range codes each tensor's codes with a range coder
(`constriction`'s queue RangeEncoder), each code under a quantised Gaussian over 0..2**bits-1 centred on a
prediction from its left neighbour (leaky: every code keeps a non-zero probability): per tensor, C u8 means, C u8
left-neighbour weights, C u8 log-standard-deviations of the residuals (`_model_params`), a u32 count of 32-bit
words, then the words. `encode_features` sends whichever of the three is smallest (coder="auto").
Version 1 (float32 scales, no range coder) is refused: both ends run the same build.

A value is reconstructed as `code * scale[c] + offset[c]`; every reconstructed value must be finite and within
+-MAX_LATENT. Decoding checks every field (reserved ones must be zero), every length and the CRC before it
allocates or decompresses anything large, and raises `PayloadError` (only) on any defect. Nothing is ever unpickled.

Images are checked by the rules of the decoder that will decode them: the frame size of a JPEG is read the way
libjpeg reads it (`image_size`), on a strict subset of the format where libjpeg cannot read the markers differently,
and OpenCV decodes only what passed the width, height and pixel caps.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

MAGIC = b"ECCF"
FORMAT_VERSION = 2
KIND_FEATURES = 1
CODEC_RAW, CODEC_ZLIB, CODEC_RANGE = 0, 1, 2
CODERS = {"raw": CODEC_RAW, "deflate": CODEC_ZLIB, "range": CODEC_RANGE}  # `coder=` of encode_features, besides auto
FINGERPRINT_BYTES = 16
MAX_TENSORS = 16
MAX_SIDE = 16384  # pixels, for image and input sizes
MAX_VALUES = 1 << 26  # per tensor: guards allocation before anything is decompressed
MAX_IMAGE_PIXELS = 1 << 24  # 16.8 Mpx (4096 x 4096): a 4K UHD frame is 8.3 Mpx
MAX_LATENT = 65504.0  # largest |reconstructed latent| (float16's max): a crafted scale cannot overflow the cloud
# The JPEG quality the device sends a frame at (route=cloud, ECC_I, ECC_D+'s image frames), and what the benchmark
# bills and evaluates those frames at. Chosen from the codec's rate curve (`ecc_yolo.eval.rate.choose_quality`: the
# cheapest quality within 0.01 mAP50-95 of the cloud on the frame's own pixels) on the v2 zoo's validation split:
# q30, 1,770 B per 160-px frame (tools/choose_jpeg_quality.py, docs/benchmarks/jpeg_quality_choice.json).
JPEG_QUALITY = 30

_HEADER = struct.Struct("<4sHBB16s4HB3sII")
_RECORD = struct.Struct("<HBBHHHH")
_CRC = struct.Struct("<I")
_WORDS = struct.Struct("<I")


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


def _model_params(mean_q: np.ndarray, weight_q: np.ndarray, std_q: np.ndarray, bits: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-channel mean (code units), left-neighbour weight (0..1) and residual standard deviation (code units) from
    their u8 forms, computed the same way at both ends from the same bytes: mean = q / 255 * (2**bits - 1),
    weight = q / 255, std = 2 ** (q / 16 - 4) (1/16 to ~2**12)."""
    return (mean_q.astype(np.float64) / 255.0 * ((1 << bits) - 1), weight_q.astype(np.float64) / 255.0,
            np.exp2(std_q.astype(np.float64) / 16.0 - 4.0))


def _predictions(codes: np.ndarray, mean: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(C, H, W) prediction of each code: the channel mean, moved towards its left neighbour's code by the channel's
    `weight` (0..1); column 0 (no left neighbour) is predicted by the mean."""
    pred = np.broadcast_to(mean[:, None, None], codes.shape).astype(np.float64)
    pred[:, :, 1:] += weight[:, None, None] * (codes[:, :, :-1] - mean[:, None, None])
    return pred


def range_encode(codes: np.ndarray, bits: int) -> bytes:
    """One tensor's (C, H, W) codes as the range body codec's record: per channel a u8 mean, a u8 weight of the left
    neighbour in the prediction and a u8 log-std of the residuals, a u32 word count, then the words. Each code is
    coded under a quantised Gaussian over 0..2**bits-1 centred on its prediction (`_predictions`: feature maps are
    smooth, so the left neighbour predicts well; i.i.d. codes get weight 0), column by column so that the decoder
    can predict each column from the one it decoded before."""
    import constriction

    codes = np.asarray(codes, dtype=np.float64)
    c, h, w = codes.shape
    mean_q = np.round(codes.reshape(c, -1).mean(1) / ((1 << bits) - 1) * 255).astype(np.uint8)
    mean, _, _ = _model_params(mean_q, np.zeros(c, np.uint8), np.zeros(c, np.uint8), bits)
    u, v = codes[:, :, 1:] - mean[:, None, None], codes[:, :, :-1] - mean[:, None, None]
    fit = (u * v).reshape(c, -1).sum(1) / np.maximum((v * v).reshape(c, -1).sum(1), 1e-12)  # least squares
    weight_q = np.round(np.clip(fit, 0, 1) * 255).astype(np.uint8)
    _, weight, _ = _model_params(mean_q, weight_q, np.zeros(c, np.uint8), bits)
    pred = _predictions(codes, mean, weight)
    spread = np.sqrt(((codes - pred) ** 2).reshape(c, -1).mean(1))
    std_q = np.clip(np.round((np.log2(np.maximum(spread, 2.0**-4)) + 4) * 16), 0, 255).astype(np.uint8)
    _, _, std = _model_params(mean_q, weight_q, std_q, bits)
    encoder = constriction.stream.queue.RangeEncoder()
    encoder.encode(codes.transpose(2, 0, 1).astype(np.int32).reshape(-1),  # column-major: (W, C, H)
                   constriction.stream.model.QuantizedGaussian(0, (1 << bits) - 1),
                   pred.transpose(2, 0, 1).reshape(-1), np.broadcast_to(std[None, :, None], (w, c, h)).reshape(-1))
    words = encoder.get_compressed().astype("<u4")
    return mean_q.tobytes() + weight_q.tobytes() + std_q.tobytes() + _WORDS.pack(len(words)) + words.tobytes()


def range_decode(sent, pos: int, end: int, bits: int, shape: tuple[int, int, int]) -> tuple[np.ndarray, int]:
    """Decode one tensor's (C, H, W) codes from the range body at `pos` (not past `end`); returns (uint8 codes, next
    pos). Work and memory are bounded by the shape (checked against MAX_VALUES, and the model's expected shapes on
    a server, before any decoding) and the words present; any words decode to codes within the bit width."""
    import constriction

    c, h, w = shape
    if pos + 3 * c + _WORDS.size > end:
        raise PayloadError("range body truncated inside a tensor's model")
    mean, weight, std = _model_params(*(np.frombuffer(sent, np.uint8, c, pos + i * c) for i in range(3)), bits)
    (n_words,) = _WORDS.unpack_from(sent, pos + 3 * c)
    pos += 3 * c + _WORDS.size
    if pos + 4 * n_words > end:
        raise PayloadError("range body truncated inside a tensor's words")
    decoder = constriction.stream.queue.RangeDecoder(np.frombuffer(sent, "<u4", n_words, pos).astype(np.uint32))
    model = constriction.stream.model.QuantizedGaussian(0, (1 << bits) - 1)
    codes = np.empty((c, h, w), dtype=np.uint8)
    mean_h, weight_h, std_h = (np.repeat(a, h) for a in (mean, weight, std))
    column = mean_h  # the prediction of column 0
    try:
        for j in range(w):  # each column is predicted from the one decoded before it
            decoded = np.asarray(decoder.decode(model, column, std_h), dtype=np.uint8)
            codes[:, :, j] = decoded.reshape(c, h)
            column = mean_h + weight_h * (decoded - mean_h)
    except (ValueError, RuntimeError, AssertionError) as e:
        raise PayloadError(f"range body: a tensor's words do not decode ({e})") from None
    return codes, pos + 4 * n_words


def encode_features(payload: FeaturePayload, coder: str = "auto") -> bytes:
    """Serialise a feature payload with body codec `coder` (raw, deflate, range; auto: the smallest of the three).
    Scales and offsets travel as float16 (`ecc_yolo.payload.quantize.quantize` makes them float16-exact)."""
    if len(payload.fingerprint) != FINGERPRINT_BYTES:
        raise ValueError(f"fingerprint must be {FINGERPRINT_BYTES} bytes")
    if not 1 <= len(payload.tensors) <= MAX_TENSORS:
        raise ValueError(f"a payload carries 1..{MAX_TENSORS} tensors, got {len(payload.tensors)}")
    records, bodies = [], []
    for t in payload.tensors:
        c, h, w = t.shape
        if not 1 <= t.bits <= 8 or (t.codes.size and int(t.codes.max()) >= 1 << t.bits):
            raise ValueError(f"tensor {t.layer}: codes do not fit in {t.bits} bits")
        records.append(_RECORD.pack(t.layer, t.bits, 0, c, h, w, 0))
        records.append(np.asarray(t.scale, "<f2").tobytes() + np.asarray(t.offset, "<f2").tobytes())
        bodies.append(pack_codes(t.codes, t.bits))
    body = b"".join(bodies)
    if coder not in (*CODERS, "auto"):
        raise ValueError(f"coder must be one of {', '.join(CODERS)} or auto, got {coder!r}")
    candidates = {}
    for name in CODERS if coder == "auto" else (coder,):
        if name == "raw":
            candidates[CODEC_RAW] = body
        elif name == "deflate":
            candidates[CODEC_ZLIB] = zlib.compress(body, 6)
        else:
            candidates[CODEC_RANGE] = b"".join(range_encode(t.codes, t.bits) for t in payload.tensors)
    codec, sent = min(candidates.items(), key=lambda item: (len(item[1]), item[0]))
    header = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        KIND_FEATURES,
        codec,
        payload.fingerprint,
        *payload.image_shape,
        *payload.input_shape,
        len(payload.tensors),
        bytes(3),
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
        # A view, not a copy: the body was read into one buffer and is not copied again.
        return _decode_features(memoryview(data).cast("B"), expected_fingerprint, expected_shapes, max_bytes)
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
    magic, version, kind, codec, fingerprint, ih, iw, nh, nw, count, reserved, raw_len, sent_len = \
        _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise PayloadError("not an ECC feature payload (bad magic)")
    if version != FORMAT_VERSION:
        raise PayloadError(f"unsupported payload version {version} (this build reads version {FORMAT_VERSION})")
    if kind != KIND_FEATURES:
        raise PayloadError(f"unsupported payload kind {kind}")
    if codec not in CODERS.values():
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
    if reserved != bytes(3):
        raise PayloadError("reserved header bytes are not zero")

    pos, specs = _HEADER.size, []
    for _ in range(count):
        if pos + _RECORD.size > n - _CRC.size:
            raise PayloadError("payload truncated inside the tensor records")
        layer, bits, reserved_byte, c, h, w, reserved_word = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        if reserved_byte or reserved_word:
            raise PayloadError(f"tensor {layer}: reserved record fields are not zero")
        if not 1 <= bits <= 8:
            raise PayloadError(f"tensor {layer}: bits {bits} out of range 1..8")
        if min(c, h, w) < 1 or c * h * w > MAX_VALUES:
            raise PayloadError(f"tensor {layer}: shape ({c}, {h}, {w}) out of range")
        end = pos + 4 * c
        if end > n - _CRC.size:
            raise PayloadError(f"tensor {layer}: payload truncated inside its scales")
        scale = np.frombuffer(data, "<f2", c, pos).astype(np.float32)
        offset = np.frombuffer(data, "<f2", c, pos + 2 * c).astype(np.float32)
        if not (np.isfinite(scale).all() and np.isfinite(offset).all() and (scale > 0).all()):
            raise PayloadError(f"tensor {layer}: non-finite or non-positive quantisation parameters")
        top = offset.astype(np.float64) + scale.astype(np.float64) * ((1 << bits) - 1)  # largest code's value
        if np.abs(offset).max() > MAX_LATENT or np.abs(top).max() > MAX_LATENT:
            raise PayloadError(f"tensor {layer}: quantisation parameters reach values beyond +-{MAX_LATENT:g}")
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
    if codec == CODEC_RANGE:  # decoded tensor by tensor, straight into codes
        tensors, pos = [], 0
        for layer, bits, c, h, w, scale, offset in specs:
            codes, pos = range_decode(sent, pos, sent_len, bits, (c, h, w))
            tensors.append(QuantizedTensor(layer, bits, codes, scale, offset))
        if pos != sent_len:
            raise PayloadError(f"range body has {sent_len - pos} bytes after its last tensor")
        return FeaturePayload(fingerprint, (ih, iw), (nh, nw), tuple(tensors))
    if codec == CODEC_RAW:
        body = sent
    else:
        inflater = zlib.decompressobj()
        try:
            body = inflater.decompress(sent, raw_len + 1)  # never inflate past what the records promise
        except zlib.error as e:
            raise PayloadError(f"compressed body is not valid zlib data ({e})") from None
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


def encode_jpeg(image_bgr: np.ndarray, quality: int | None = None) -> bytes:
    """JPEG bytes of a BGR frame (what ECC_I sends), at `quality` (default JPEG_QUALITY)."""
    quality = JPEG_QUALITY if quality is None else quality
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


IMAGE_CODECS = {"jpeg": (".jpg", cv2.IMWRITE_JPEG_QUALITY), "webp": (".webp", cv2.IMWRITE_WEBP_QUALITY)}


def encode_image(image_bgr: np.ndarray, codec: str = "jpeg", quality: int = 90) -> bytes:
    """Bytes of a BGR frame in a lossy image codec ("jpeg" or "webp") at `quality` (1..100)."""
    if codec not in IMAGE_CODECS:
        raise ValueError(f"unknown image codec '{codec}' (known: {', '.join(IMAGE_CODECS)})")
    suffix, flag = IMAGE_CODECS[codec]
    ok, buf = cv2.imencode(suffix, image_bgr, [flag, int(quality)])
    if not ok:
        raise ValueError(f"{codec} encoding failed")
    return buf.tobytes()


def image_codec_available(codec: str) -> bool:
    """Whether the installed OpenCV encodes and decodes `codec` (WebP support is a build option of OpenCV)."""
    probe = np.full((16, 16, 3), 128, np.uint8)
    try:
        decoded = cv2.imdecode(np.frombuffer(encode_image(probe, codec, 50), np.uint8), cv2.IMREAD_COLOR)
    except (ValueError, cv2.error):
        return False
    return decoded is not None and decoded.shape == probe.shape


def decode_image(data: bytes | bytearray | memoryview, max_pixels: int = MAX_IMAGE_PIXELS,
                 max_side: int = MAX_SIDE) -> np.ndarray:
    """Decode a received JPEG/PNG into a BGR array, refusing anything that is not a reasonable image.

    The frame size is read first, by the decoder's own rules (`image_size`), and checked against the caps before
    OpenCV allocates anything for the pixels.

    Args:
        data: the file's bytes.
        max_pixels: most pixels (width x height).
        max_side: most pixels along either side.

    Raises:
        PayloadError: not a JPEG/PNG, a JPEG outside the strict subset `image_size` reads, over a cap, or undecodable.
    """
    h, w = image_size(data)
    if bytes(data[:2]) == b"\xff\xd8" and bytes(data[-2:]) != b"\xff\xd9":  # libjpeg would pad it with grey
        raise PayloadError("JPEG truncated: it does not end with an EOI marker")
    if h > max_side or w > max_side or h * w > max_pixels:
        raise PayloadError(f"image of {w}x{h} pixels exceeds the limits ({max_side} pixels a side, "
                           f"{max_pixels} pixels)")
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        raise PayloadError("image could not be decoded")
    if image.shape[:2] not in ((h, w), (w, h)):  # (w, h): turned by its EXIF orientation; anything else is a bug
        raise PayloadError(f"image decoded as {image.shape[1]}x{image.shape[0]}, its header says {w}x{h}")
    return image


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG markers accepted before the first scan: baseline, extended and progressive Huffman frames; tables, restart
# interval, APPn and comments (libjpeg parses or skips each of them by its length). Anything else is refused.
_JPEG_SOF = frozenset((0xC0, 0xC1, 0xC2))
_JPEG_SEGMENTS = _JPEG_SOF | {0xC4, 0xDB, 0xDD, 0xFE} | set(range(0xE0, 0xF0))
_JPEG_SOS = 0xDA


def image_size(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(height, width) of the frame the decoder will decode, without decoding pixels.

    PNG: the IHDR chunk, which libpng (and OpenCV's reader) require to be the first chunk. JPEG: the SOF segment, read
    with libjpeg's marker rules (jdmarker.c) on a strict subset of the format, so that libjpeg cannot read the same
    bytes differently: libjpeg skips stray bytes and fill bytes between markers and takes a length field below 2 as
    2, where a naive walk would land elsewhere and find another "frame" (a small one hiding the real one). Here,
    every marker must follow the previous segment directly, every length must be >= 2 and inside the data, and
    exactly one frame header (SOF0, SOF1 or SOF2, with the length libjpeg demands) must come before the first scan.

    Raises:
        PayloadError: not a PNG or JPEG, or a JPEG outside that subset, truncated before its first scan.
    """
    data = memoryview(data).cast("B")
    n = len(data)
    if bytes(data[:8]) == PNG_SIGNATURE:
        if n < 33 or bytes(data[12:16]) != b"IHDR" or struct.unpack_from(">I", data, 8)[0] != 13:
            raise PayloadError("PNG does not start with its IHDR chunk")
        w, h = struct.unpack_from(">II", data, 16)
        if not (h and w):
            raise PayloadError(f"PNG of {w}x{h} pixels")
        return h, w
    if bytes(data[:3]) != b"\xff\xd8\xff":
        raise PayloadError("image body must be a JPEG or PNG file")
    pos, frame = 2, None
    while True:
        if pos + 4 > n:
            raise PayloadError("JPEG truncated before its first scan")
        marker = data[pos + 1]
        if data[pos] != 0xFF or marker in (0x00, 0xFF):
            raise PayloadError(f"JPEG has stray or fill bytes at offset {pos} (refused: decoders disagree on them)")
        if marker not in _JPEG_SEGMENTS and marker != _JPEG_SOS:
            raise PayloadError(f"JPEG marker 0xFF{marker:02X} at offset {pos} is not accepted before the first scan")
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > n:
            raise PayloadError(f"JPEG segment 0xFF{marker:02X} at offset {pos} has length {length} out of range")
        if marker in _JPEG_SOF:
            if frame is not None:
                raise PayloadError("JPEG has more than one frame header (SOF)")
            if length < 8:
                raise PayloadError("JPEG frame header (SOF) truncated")
            h, w, components = struct.unpack_from(">HHB", data, pos + 5)
            if length != 8 + 3 * components or components not in (1, 3, 4):
                raise PayloadError(f"JPEG frame header with {components} components and length {length}")
            if not (h and w):  # height 0 (defined later by DNL) is refused by libjpeg too
                raise PayloadError(f"JPEG frame of {w}x{h} pixels")
            frame = (h, w)
        elif marker == _JPEG_SOS:
            if frame is None:
                raise PayloadError("JPEG scan before its frame header (SOF)")
            return frame
        pos += 2 + length


def transmit(frame: np.ndarray, codec: str, quality: int, scale: float) -> tuple[np.ndarray, int]:
    """What the cloud receives for a letterboxed BGR frame sent as `codec` at `quality` and `scale`.

    Returns:
        the decoded frame, at the frame's own size (enlarged back with INTER_LINEAR when scale < 1), and the
        payload's size in bytes.
    """
    h, w = frame.shape[:2]
    small = frame
    if scale != 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 sizes are (width, height)
        small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    data = encode_image(small, codec, quality)
    if codec == "jpeg":
        decoded = decode_image(data)  # what the server accepts and decodes
    else:
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if decoded is None:
            raise PayloadError(f"{codec} payload could not be decoded")
    if decoded.shape[:2] != (h, w):
        decoded = cv2.resize(decoded, (w, h), interpolation=cv2.INTER_LINEAR)
    return decoded, len(data)
