"""What an image file's header says before it is decoded: its size (PNG, JPEG, WebP) and its EXIF orientation.

The size lets a huge image be refused before it takes the memory. The orientation is the tag a camera or phone
writes instead of turning the pixels: cv2.imdecode applies it in every mode except IMREAD_UNCHANGED, the one
mode that keeps alpha and 16-bit depth, which is the one gcomp decodes with. So the tag is read here (a JPEG's
APP1 Exif segment, a PNG's eXIf chunk, a WebP's EXIF chunk) and applied the way OpenCV's ApplyExifOrientation
does (`orient`). Images are then completed upright, as they are shown and as a mask file (decoded in grayscale,
so with the tag applied) is read. OpenCV's TIFF reader applies a TIFF's own orientation in every mode.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: EXIF's orientation tag; 1 is "as stored"
ORIENTATION_TAG = 0x0112
#: the bytes a JPEG's header is read from: its APP1 Exif segment (at most 64 KiB) comes before the frame. PNG and WebP
#: chunks are walked over the whole file instead, 8 bytes per chunk header (a WebP's EXIF chunk follows its image
#: data; a PNG's eXIf may follow IDAT or a large text chunk; OpenCV reads both)
HEAD = 1 << 16


@dataclass(frozen=True)
class Header:
    size: tuple[int, int] | None = None  # (width, height) as stored; None: unknown before decoding, or unparsed
    orientation: int = 1  # EXIF orientation, 1..8 (1: as stored)


def read_header(buf: np.ndarray) -> Header:
    """The size and orientation from an encoded image's header; what does not parse is left to the decoder (its
    default: unknown size, orientation 1)."""
    head = buf[:HEAD].tobytes()
    try:
        if head[:8] == b"\x89PNG\r\n\x1a\n":
            return _png(buf, head)
        if head[:2] == b"\xff\xd8":
            return _jpeg(head)
        if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
            return _webp(buf)
    except (IndexError, ValueError):
        pass
    return Header()


def _chunks(buf: np.ndarray, start: int, length_first: bool, order: str):
    """(type, data offset, data length) of each chunk from `start` (PNG: length then type, big-endian, a 4-byte CRC
    after the data; RIFF: type then length, little-endian, data padded to an even length)."""
    i, end = start, len(buf)
    while i + 8 <= end:
        h = buf[i:i + 8].tobytes()
        n, kind = (int.from_bytes(h[:4], order), h[4:]) if length_first else (int.from_bytes(h[4:], order), h[:4])
        yield kind, i + 8, n
        i += 8 + n + (4 if length_first else n & 1)


def _png(buf: np.ndarray, head: bytes) -> Header:
    size = None
    if head[12:16] == b"IHDR":
        size = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    for kind, at, n in _chunks(buf, 8, True, "big"):
        if kind == b"eXIf":
            return Header(size, _tiff_orientation(buf[at:at + n].tobytes()) or 1)
        if kind == b"IEND":
            break
    return Header(size)


def _jpeg(b: bytes) -> Header:
    orientation, i = None, 2
    while i + 9 <= len(b) and b[i] == 0xFF:
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment: the size
            return Header((int.from_bytes(b[i + 7:i + 9], "big"), int.from_bytes(b[i + 5:i + 7], "big")),
                          orientation or 1)
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        n = int.from_bytes(b[i + 2:i + 4], "big")
        if marker == 0xE1 and b[i + 4:i + 10] == b"Exif\x00\x00" and orientation is None:  # the first Exif counts
            orientation = _tiff_orientation(b[i + 10:i + 2 + n]) or 1
        i += 2 + n
    return Header(orientation=orientation or 1)


def _webp(buf: np.ndarray) -> Header:
    size, orientation = None, 1
    for kind, at, n in _chunks(buf, 12, False, "little"):
        d = buf[at:at + min(n, 30)].tobytes()
        if kind == b"VP8X" and len(d) >= 10:  # the extended format: the canvas, 24-bit sizes minus one
            size = int.from_bytes(d[4:7], "little") + 1, int.from_bytes(d[7:10], "little") + 1
        elif kind == b"VP8 " and size is None and len(d) >= 10 and d[3:6] == b"\x9d\x01\x2a":  # a lossy key frame
            size = int.from_bytes(d[6:8], "little") & 0x3FFF, int.from_bytes(d[8:10], "little") & 0x3FFF
        elif kind == b"VP8L" and size is None and len(d) >= 5 and d[0] == 0x2F:  # lossless: 14-bit sizes minus one
            bits = int.from_bytes(d[1:5], "little")
            size = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        elif kind == b"EXIF":
            data = buf[at:at + n].tobytes()
            orientation = _tiff_orientation(data[6:] if data[:6] == b"Exif\x00\x00" else data) or 1
            break
    return Header(size, orientation)


def _tiff_orientation(t: bytes) -> int | None:
    """The orientation in EXIF data (a TIFF structure: byte order, IFD0's offset, its 12-byte entries); None when
    there is no tag, or one OpenCV would not read (not a SHORT, or out of 1..8)."""
    order = {b"II": "little", b"MM": "big"}.get(t[:2])
    if order is None or len(t) < 8:
        return None
    ifd = int.from_bytes(t[4:8], order)
    count = int.from_bytes(t[ifd:ifd + 2], order) if ifd + 2 <= len(t) else 0
    for e in range(ifd + 2, min(ifd + 2 + 12 * count, len(t) - 11), 12):
        if int.from_bytes(t[e:e + 2], order) == ORIENTATION_TAG:
            if int.from_bytes(t[e + 2:e + 4], order) != 3:  # a SHORT, as EXIF says (OpenCV reads no other type)
                return None
            value = int.from_bytes(t[e + 8:e + 10], order)
            return value if 1 <= value <= 8 else None
    return None


def orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels turned upright, as OpenCV's ApplyExifOrientation turns them (a transpose for 5-8, then a
    flip: 2 and 6 left-right, 3 and 7 both ways, 4 and 8 top-bottom); any depth and channels."""
    if orientation in (5, 6, 7, 8):
        img = img.swapaxes(0, 1)
    flip = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation)
    return np.ascontiguousarray(img if flip is None else np.flip(img, flip))
