"""What an image file's header says before it is decoded: its size (PNG, JPEG) and its EXIF orientation.

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
#: the bytes read: a JPEG's APP1 Exif segment (at most 64 KiB) comes before its frame, a PNG's eXIf and a WebP's
#: EXIF chunk are near the start (after IHDR / VP8X, and ICC profiles if any); past this a file is taken as stored
HEAD = 1 << 16


@dataclass(frozen=True)
class Header:
    size: tuple[int, int] | None = None  # (width, height) as stored; None: not a PNG or JPEG, or unparsed
    orientation: int = 1  # EXIF orientation, 1..8 (1: as stored)


def read_header(buf: np.ndarray) -> Header:
    """The size and orientation from the first bytes of an encoded image; what does not parse is left to the
    decoder (its default: unknown size, orientation 1)."""
    b = buf[:HEAD].tobytes()
    try:
        if b[:8] == b"\x89PNG\r\n\x1a\n":
            return _png(b)
        if b[:2] == b"\xff\xd8":
            return _jpeg(b)
        if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
            return Header(orientation=_webp_orientation(b))
    except (IndexError, ValueError):
        pass
    return Header()


def _png(b: bytes) -> Header:
    size = None
    if b[12:16] == b"IHDR":
        size = int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")
    i = 8
    while i + 8 <= len(b):  # chunks: length, type, data, CRC; eXIf comes before the image data (libpng reads it there)
        n, kind = int.from_bytes(b[i:i + 4], "big"), b[i + 4:i + 8]
        if kind == b"eXIf":
            return Header(size, _tiff_orientation(b[i + 8:i + 8 + n]))
        if kind in (b"IDAT", b"IEND"):
            break
        i += 12 + n
    return Header(size)


def _jpeg(b: bytes) -> Header:
    orientation, i = 1, 2
    while i + 9 <= len(b) and b[i] == 0xFF:
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start-of-frame segment: the size
            return Header((int.from_bytes(b[i + 7:i + 9], "big"), int.from_bytes(b[i + 5:i + 7], "big")), orientation)
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            i += 2
            continue
        n = int.from_bytes(b[i + 2:i + 4], "big")
        if marker == 0xE1 and b[i + 4:i + 10] == b"Exif\x00\x00" and orientation == 1:  # the first Exif APP1 counts
            orientation = _tiff_orientation(b[i + 10:i + 2 + n])
        i += 2 + n
    return Header(orientation=orientation)


def _webp_orientation(b: bytes) -> int:
    i = 12
    while i + 8 <= len(b):  # RIFF chunks: FourCC, little-endian size, data padded to an even length
        kind, n = b[i:i + 4], int.from_bytes(b[i + 4:i + 8], "little")
        if kind == b"EXIF":
            data = b[i + 8:i + 8 + n]
            return _tiff_orientation(data[6:] if data[:6] == b"Exif\x00\x00" else data)
        i += 8 + n + (n & 1)
    return 1


def _tiff_orientation(t: bytes) -> int:
    """The orientation in EXIF data (a TIFF structure: byte order, IFD0's offset, its 12-byte entries)."""
    order = {b"II": "little", b"MM": "big"}.get(t[:2])
    if order is None or len(t) < 8:
        return 1
    ifd = int.from_bytes(t[4:8], order)
    count = int.from_bytes(t[ifd:ifd + 2], order) if ifd + 2 <= len(t) else 0
    for e in range(ifd + 2, min(ifd + 2 + 12 * count, len(t) - 11), 12):
        if int.from_bytes(t[e:e + 2], order) == ORIENTATION_TAG:
            kind = int.from_bytes(t[e + 2:e + 4], order)  # SHORT (3), as EXIF says; LONG (4) from some writers
            value = int.from_bytes(t[e + 8:e + 10] if kind == 3 else t[e + 8:e + 12], order)
            return value if 1 <= value <= 8 else 1
    return 1


def orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """The stored pixels turned upright, as OpenCV's ApplyExifOrientation turns them (a transpose for 5-8, then a
    flip: 2 and 6 left-right, 3 and 7 both ways, 4 and 8 top-bottom); any depth and channels."""
    if orientation in (5, 6, 7, 8):
        img = img.swapaxes(0, 1)
    flip = {2: (1,), 3: (0, 1), 4: (0,), 6: (1,), 7: (0, 1), 8: (0,)}.get(orientation)
    return np.ascontiguousarray(img if flip is None else np.flip(img, flip))
