"""Hostile request bodies for the cloud server: crafted JPEGs and PNGs whose headers disagree with their data, and
feature payloads with absurd headers. Shared by tests/test_hostile_input.py and tools/bench_overload.py.

Every case is a request a server must refuse with a 4xx, quickly and without spending memory on it. The JPEG tricks
exploit how libjpeg reads markers (jdmarker.c): it skips fill bytes (FF FF) and stray bytes between markers, and
treats the byte after FF FF as the marker; a reader that does not do the same can be shown a small decoy frame while
libjpeg decodes a large one.
"""

from __future__ import annotations

import dataclasses
import struct
import zlib
from typing import NamedTuple

import cv2
import numpy as np

IMAGE_PATH = "/v1/detect/image"
FEATURES_PATH = "/v1/detect/features"


class Case(NamedTuple):
    """One hostile request: what is sent where, and the refusal expected."""

    name: str
    path: str
    body: bytes
    status: int
    kind: str


def jpeg(h: int, w: int, progressive: bool = False, quality: int = 75, seed: int = 0) -> bytes:
    """A real JPEG of h x w pixels (blurred noise; flat grey above 1 Mpx, to keep building it cheap)."""
    if h * w > 1 << 20:
        image = np.full((h, w, 3), 128, np.uint8)
    else:
        rng = np.random.default_rng(seed)
        image = cv2.GaussianBlur((rng.random((h, w, 3)) * 255).astype(np.uint8), (0, 0), 2)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality,
                                           cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return buf.tobytes()


def png(h: int, w: int) -> bytes:
    """A real PNG of h x w pixels."""
    ok, buf = cv2.imencode(".png", np.full((h, w, 3), 100, np.uint8))
    assert ok
    return buf.tobytes()


def segments(data: bytes) -> list[tuple[int, int, int]]:
    """(offset, marker, length) of a well-formed JPEG's segments, up to and including its first SOS."""
    pos, out = 2, []
    while True:
        marker, (length,) = data[pos + 1], struct.unpack_from(">H", data, pos + 2)
        out.append((pos, marker, length))
        if marker == 0xDA:
            return out
        pos += 2 + length


def _sof(data: bytes) -> tuple[int, int]:
    """(offset, length) of a well-formed JPEG's frame header."""
    return next((pos, length) for pos, marker, length in segments(data) if 0xC0 <= marker <= 0xC2)


def with_frame_size(data: bytes, h: int, w: int) -> bytes:
    """The JPEG with its frame header declaring h x w (the entropy data stays the small image's)."""
    pos, _ = _sof(data)
    out = bytearray(data)
    struct.pack_into(">HH", out, pos + 5, h, w)
    return bytes(out)


def with_hidden_frame(data: bytes, decoy: tuple[int, int] = (16, 16)) -> bytes:
    """The JPEG's frame hidden behind a decoy: after SOI come `FF FF 01`, which libjpeg reads as a fill byte and a
    TEM marker (no length) and a naive marker walk as a marker FF with length 0x01FF; the walk lands inside an APP1
    segment that holds a decoy frame header of `decoy` pixels, while libjpeg reads the real one right after TEM."""
    pos, length = _sof(data)
    sof, rest = data[pos:pos + 2 + length], data[2:pos] + data[pos + 2 + length:]
    decoy_sof = b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", *decoy) + b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    land = 2 + 2 + 0x01FF  # where the naive walk jumps to: after FF FF, a "length" of bytes 01 FF
    app_payload = bytes(land - (2 + 3 + len(sof) + 4)) + decoy_sof
    app = b"\xff\xe1" + struct.pack(">H", len(app_payload) + 2) + app_payload
    return b"\xff\xd8" + b"\xff\xff\x01" + sof + app + rest


def with_stray_bytes(data: bytes) -> bytes:
    """Stray bytes between two segments (libjpeg skips them with a warning)."""
    pos, _, length = segments(data)[1]
    return data[:pos] + b"\x00\x11\x22" + data[pos:]


def with_short_segment(data: bytes) -> bytes:
    """An APP2 segment whose length field is 0 (libjpeg steps over just the field; a naive walk does not move)."""
    return data[:2] + b"\xff\xe2\x00\x00" + data[2:]


def with_second_frame(data: bytes, h: int, w: int) -> bytes:
    """A second frame header, of h x w, right after the first."""
    pos, length = _sof(data)
    second = bytearray(data[pos:pos + 2 + length])
    struct.pack_into(">HH", second, 5, h, w)
    return data[:pos + 2 + length] + bytes(second) + data[pos + 2 + length:]


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(h: int, w: int, first: bytes = b"") -> bytes:
    """A PNG whose IHDR declares h x w (RGB, 8 bits) over a tiny IDAT, with `first` chunks before the IHDR."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return (b"\x89PNG\r\n\x1a\n" + first + ihdr + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


def hostile_images() -> list[Case]:
    """Image-route cases (all 400 bad_image)."""
    small, prog = jpeg(48, 64), jpeg(48, 64, progressive=True)
    cases = [
        ("JPEG frame hidden behind a decoy (2000x2000 behind 16x16)", with_hidden_frame(jpeg(2000, 2000, quality=30))),
        ("JPEG frame hidden behind a decoy (12000x12000 declared, small data)",
         with_hidden_frame(with_frame_size(small, 12000, 12000))),
        ("progressive JPEG frame hidden behind a decoy", with_hidden_frame(jpeg(1500, 1500, progressive=True))),
        ("JPEG with stray bytes between markers", with_stray_bytes(small)),
        ("JPEG with a segment length of 0", with_short_segment(small)),
        ("JPEG with two frame headers (small, then 20000x20000)", with_second_frame(small, 20000, 20000)),
        ("JPEG declaring 65500x65500 over small data", with_frame_size(small, 65500, 65500)),
        ("progressive JPEG declaring 30000x30000", with_frame_size(prog, 30000, 30000)),
        ("JPEG declaring height 0 (DNL)", with_frame_size(small, 0, 64)),
        ("real JPEG of 4100x4100 (over 16.8 Mpx)", jpeg(4100, 4100, quality=20)),
        ("real progressive JPEG of 4100x4100", jpeg(4100, 4100, progressive=True, quality=20)),
        ("JPEG 1 pixel high, 3000 wide", jpeg(1, 3000)),
        ("JPEG 3000 high, 1 pixel wide", jpeg(3000, 1)),
        ("PNG declaring 100000x100000", png_declaring(100000, 100000)),
        ("PNG declaring 1x1000000000", png_declaring(1, 1_000_000_000)),
        ("PNG with a chunk before IHDR", png_declaring(64, 64, first=_chunk(b"tEXt", b"k\x00v"))),
        ("PNG 1 pixel high, 4000 wide", png(1, 4000)),
        ("PNG truncated in its data", png(64, 64)[:-30]),
        ("JPEG truncated in its header", small[:40]),
        ("JPEG truncated before its first scan", small[:segments(small)[-1][0] + 4]),
        ("JPEG truncated in its scan", small[: len(small) * 2 // 3]),
        ("JPEG signature only", b"\xff\xd8\xff"),
        ("not an image (GIF)", b"GIF89a" + bytes(100)),
    ]
    return [Case(name, IMAGE_PATH, body, 400, "bad_image") for name, body in cases]


def _resealed(body: bytes | bytearray) -> bytes:
    return bytes(body[:-4]) + struct.pack("<I", zlib.crc32(bytes(body[:-4])))


def _patched(data: bytes, offset: int, fmt: str, *values) -> bytes:
    """The payload with one field rewritten and its CRC fixed, so that only the field's own check can refuse it."""
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return _resealed(out)


def hostile_payloads(good: bytes) -> list[Case]:
    """Feature-route cases derived from a good payload for the served model (all 400 bad_payload)."""
    from ecc_yolo.payload.codec import decode_features, encode_features

    p = decode_features(good)
    t = p.tensors[0]

    def with_params(scale: float, offset: float) -> bytes:
        bad = dataclasses.replace(t, scale=np.full_like(t.scale, scale), offset=np.full_like(t.offset, offset))
        return encode_features(dataclasses.replace(p, tensors=(bad, *p.tensors[1:])))

    records = 44 + sum(12 + 8 * q.shape[0] for q in p.tensors)
    bomb = zlib.compress(bytes(64 << 20), 9)  # 64 MiB of zeros in about 64 KiB
    forged = bytearray(good[:records]) + bomb + bytes(4)
    struct.pack_into("<I", forged, 40, len(bomb))
    cases = [
        ("payload declaring a 65535x65535x65535 tensor", _patched(good, 44 + 4, "<3H", 65535, 65535, 65535)),
        ("payload declaring 255 tensors", _patched(good, 32, "<B", 255)),
        ("payload declaring a 4 GiB body", _patched(good, 36, "<I", 0xFFFFFFFF)),
        ("payload declaring an image of 0 pixels", _patched(good, 24, "<H", 0)),
        ("payload with reserved bytes set", _patched(good, 33, "<B", 7)),
        ("payload with NaN quantisation scales", with_params(np.nan, 0.0)),
        ("payload with infinite offsets", with_params(1.0, np.inf)),
        ("payload with scales of 1e30", with_params(1e30, 0.0)),
        ("payload whose zlib body inflates to 64 MiB", _resealed(forged)),
        ("payload truncated", good[: len(good) // 2]),
    ]
    return [Case(name, FEATURES_PATH, body, 400, "bad_payload") for name, body in cases]
