"""Image IO through OpenCV: decode any common format, keep what the input was, write atomically.

An image keeps its format on the way out: grayscale stays grayscale, RGBA keeps its alpha, 16-bit
stays 16-bit, PNG stays PNG, JPEG is written at quality 95. Known pixels are copied from the
original array, so they are bit-identical wherever the format is lossless.
"""
from __future__ import annotations

import itertools
import os
import stat
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .headers import orient, read_header

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
JPEG_QUALITY = 95
#: formats OpenCV writes in 8 bits only: a 16-bit or float image is converted (as for the model) before encoding
EIGHT_BIT = (".jpg", ".jpeg", ".bmp", ".webp")
#: the smallest side gcomp completes: a smaller image cannot hold both a hole and known pixels around it in the
#: finest mask kinds (grid and lowres repeat every 4 pixels of a 32-px model: 8 pixels of a 64-px one's image)
MIN_SIDE = 8

# A corrupt input gets gcomp's one `error: <file>: <reason>` line; OpenCV's own decoders would print
# `[ WARN:...]` / `[ERROR:...]` lines before it (a truncated PNG, a bad TIFF directory), so OpenCV's
# logging is off while gcomp decodes, and only then: the level is process-wide, and a program using gcomp
# keeps its own cv2 messages. Decodes run on several threads: the first to enter silences, the last to
# leave restores. A user who sets OPENCV_LOG_LEVEL (e.g. DEBUG, to see what OpenCV says) keeps their level.
_LOG = getattr(getattr(cv2, "utils", None), "logging", None)
_quiet_lock = threading.Lock()
_quiet = {"depth": 0, "saved": None}


@contextmanager
def opencv_quiet():
    if _LOG is None or "OPENCV_LOG_LEVEL" in os.environ:
        yield
        return
    with _quiet_lock:
        if _quiet["depth"] == 0:
            _quiet["saved"] = _LOG.getLogLevel()
            _LOG.setLogLevel(_LOG.LOG_LEVEL_SILENT)
        _quiet["depth"] += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet["depth"] -= 1
            if _quiet["depth"] == 0:
                _LOG.setLogLevel(_quiet["saved"])


class ImageError(ValueError):
    """An input that is not a usable image (empty, corrupt, unsupported, too small or too large)."""


def _max_pixels(default: int = 200_000_000) -> int:
    """GCOMP_MAX_IMAGE_PIXELS, else 200 megapixels; 0 = no limit (a value that is not an integer >= 0 is ignored,
    and a job says so: max_pixels_warning). Completing one image takes ~40 bytes per pixel at its peak (the decoded
    image, its RGB copy, the mask, the fill, the output; a hole over 4 megapixels adds ~160 per hole pixel,
    engine/prepare.py), so the default bounds one image at ~8 GB, and refuses decompression bombs (a small PNG or
    JPEG that decodes to gigabytes) before they are decoded, as PIL's MAX_IMAGE_PIXELS does."""
    raw = os.environ.get("GCOMP_MAX_IMAGE_PIXELS")
    value = None if raw is None else _pixel_count(raw)
    return default if value is None else value


def _pixel_count(raw: str) -> int | None:
    try:
        value = int(raw)
    except ValueError:
        return None
    return value if value >= 0 else None


def max_pixels_warning() -> str | None:
    """The line a job logs when GCOMP_MAX_IMAGE_PIXELS is set but ignored (not an integer >= 0)."""
    raw = os.environ.get("GCOMP_MAX_IMAGE_PIXELS")
    if raw is None or _pixel_count(raw) is not None:
        return None
    return (f"warning: GCOMP_MAX_IMAGE_PIXELS={raw!r} is not a pixel count (an integer >= 0; 0 lifts the limit): "
            f"the limit is {_megapixels(MAX_PIXELS)} megapixels")


#: images with more pixels are refused (one error line naming the file); set it to 0 for no limit
MAX_PIXELS = _max_pixels()


def check_size(w: int, h: int, name: str) -> None:
    """Refuse (ImageError, naming the file) an image under MIN_SIDE on a side or over MAX_PIXELS."""
    check_min_side(w, h, name)
    if MAX_PIXELS and w * h > MAX_PIXELS:
        raise ImageError(f"{name}: {w}x{h} is {_megapixels(w * h)} megapixels, over the limit of "
                         f"{_megapixels(MAX_PIXELS)} (GCOMP_MAX_IMAGE_PIXELS=N raises it, 0 lifts it; completing takes "
                         f"~40 bytes per pixel)")


def check_min_side(w: int, h: int, name: str) -> None:
    """Refuse (ImageError) an image under MIN_SIDE on a side: files when read, arrays when prepared (a mask kind
    drawn on 1x1 pixels keeps them all, and "nothing to fill" would blame the mask)."""
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"{name}: {w}x{h} is too small to complete (the minimum is {MIN_SIDE}x{MIN_SIDE} pixels)")


def _megapixels(n: int) -> str:
    """2.25 (not 2, beside a limit of 2), 200, 1,500, 0.0064."""
    return f"{n / 1e6:,.2f}".rstrip("0").rstrip(".") if n >= 1e6 else f"{n / 1e6:.2g}"


class OutputError(OSError):
    """The output location cannot be written (read-only, full, not a folder)."""


@dataclass
class Image:
    """The original pixels (as decoded, any depth/channels) and an 8-bit RGB view for the model."""

    original: np.ndarray
    rgb: np.ndarray  # HxWx3 uint8

    @property
    def shape(self) -> tuple[int, int]:
        return self.rgb.shape[:2]


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in SUFFIXES


def decode(data: bytes | np.ndarray, name: str = "image") -> Image:
    """An encoded image -> Image, turned upright by its EXIF orientation (headers.py: as it is shown, and as a mask
    file is read). Too small, too large (refused from the header before decoding) or undecodable: ImageError."""
    buf = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if buf.size == 0:
        raise ImageError(f"{name}: empty file")
    header = read_header(buf)
    if header.size is not None:
        check_size(*header.size, name)  # before decoding: a huge image is refused before it takes the memory
    try:
        with opencv_quiet():
            img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except MemoryError:
        raise ImageError(f"{name}: not enough memory to decode it") from None
    except cv2.error as e:  # OpenCV refuses what it cannot hold (a BMP header claiming 40000x40000) by raising
        raise ImageError(f"{name}: not a readable image ({opencv_reason(e)})") from None
    if img is None:
        raise ImageError(f"{name}: not a readable image (corrupt or unsupported format)")
    if header.orientation != 1:
        img = orient(img, header.orientation)
    check_size(img.shape[1], img.shape[0], name)
    return Image(original=img, rgb=to_rgb8(img))


def opencv_reason(e: Exception) -> str:
    """OpenCV's error in one line (its message is several, with a source path): what it checked."""
    return str(getattr(e, "err", "") or str(e).strip().splitlines()[-1])


def read_bytes(path: str | Path) -> bytes:
    """A file's bytes, refused (ImageError, naming it) unless it is a regular file: a FIFO or a device named like an
    image would block the job or never end (/dev/zero). Opened non-blocking, so a FIFO is refused, not waited on."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as e:
        raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
    # not cv2.imread: it fails silently on odd names; unbuffered: one read, ~20 us less than np.fromfile
    with open(fd, "rb", buffering=0) as f:
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise ImageError(f"{path}: not a regular file ({_file_kind(mode)})")
            return f.readall()
        except OSError as e:
            raise ImageError(f"{path}: cannot read ({e.strerror or e})") from None
        except MemoryError:
            raise ImageError(f"{path}: not enough memory to read it") from None


_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


def _file_kind(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")


def read(path: str | Path) -> Image:
    return decode(read_bytes(path), str(path))


def to_rgb8(img: np.ndarray) -> np.ndarray:
    if img.dtype != np.uint8:
        if img.dtype not in (np.uint16, np.float32, np.float64):
            raise ImageError(f"unsupported pixel type {img.dtype}")
        img = _to_uint8(img)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    if img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def like_original(rgb: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Convert an 8-bit RGB fill into the original's layout and depth."""
    if original.ndim == 2 or original.shape[2] == 1:
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        out = out if original.ndim == 2 else out[:, :, None]
    elif original.shape[2] == 4:
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA)
        out[:, :, 3] = _to_uint8(original[:, :, 3])
    else:
        out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if original.dtype == np.uint16:
        out = out.astype(np.uint16) * 257
    elif original.dtype != np.uint8:
        out = out.astype(original.dtype) / 255
    if original.dtype != np.uint8 and original.ndim == 3 and original.shape[2] == 4:
        out[:, :, 3] = original[:, :, 3]  # the alpha as it was, not through 8 bits
    return out


def _to_uint8(a: np.ndarray) -> np.ndarray:
    """16-bit (// 257) or float in [0, 1] (x 255, rounded) -> 8-bit, as to_rgb8 converts them for the model."""
    if a.dtype == np.uint16:
        return (a // 257).astype(np.uint8)
    if a.dtype in (np.float32, np.float64):
        return np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8)
    return a.astype(np.uint8)


def composite(original: np.ndarray, fill_rgb: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Known pixels from the original, untouched; the rest from the fill."""
    fill = like_original(fill_rgb, original)
    k = known.astype(bool)
    if original.ndim == 3:
        k = k[:, :, None]
    return np.where(k, original, fill)


def encode(img: np.ndarray, suffix: str) -> bytes:
    suffix = suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if suffix in (".jpg", ".jpeg") else []
    if suffix in EIGHT_BIT and img.dtype != np.uint8:  # OpenCV would clip 16-bit values (WebP) or refuse
        img = _to_uint8(img)
    ok, buf = cv2.imencode(suffix, img, params)
    if not ok:
        raise ImageError(f"cannot encode an image as {suffix}")
    return buf.tobytes()


TMP_PREFIX, TMP_SUFFIX = ".gcomp-", ".tmp"
NEW_FILE_MODE = 0o666  # what open() asks for; the kernel takes the umask's bits away
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
_tmp_serial = itertools.count()  # next() on a count is atomic: threads never draw the same name


def _create_temp(folder: Path, tag: str) -> tuple[int, Path]:
    """A new file under a temporary name in `folder`, created with NEW_FILE_MODE so that the kernel applies the
    umask, as for any program's output (mkstemp's 0600 would need an fchmod and a read of the umask per file:
    a third of the cost of writing a small face). The name is this process's id and a serial number; one left by
    an earlier process of the same id is passed over."""
    while True:
        tmp = folder / f"{TMP_PREFIX}{tag}{os.getpid()}-{next(_tmp_serial)}{TMP_SUFFIX}"
        try:
            return os.open(tmp, _TMP_FLAGS, NEW_FILE_MODE), tmp
        except FileExistsError:
            continue


def write_atomic(path: str | Path, data: bytes, tag: str = "") -> None:
    """Write to a temporary name in the same folder, then rename: a reader never sees half a file.

    `tag` goes into the temporary name so a rerun can remove what a killed run of the same job
    (same shard) left behind, without touching other shards' files in flight. A missing folder is created.
    """
    path = Path(path)
    try:
        try:
            fd, tmp = _create_temp(path.parent, tag)
        except FileNotFoundError:  # the folder's first file: one mkdir per folder, not one per write
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = _create_temp(path.parent, tag)
    except OSError as e:
        raise OutputError(f"cannot write to {path.parent}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


def write(path: str | Path, img: np.ndarray, tag: str = "") -> None:
    write_atomic(path, encode(img, Path(path).suffix), tag)


def remove_stale_temps(root: Path, tag: str) -> int:
    """Delete temporary files a killed run with this tag left under root; returns how many."""
    n = 0
    if root.is_dir():
        for dirpath, _, filenames in os.walk(root):
            for name in filenames:
                if name.startswith(TMP_PREFIX + tag) and name.endswith(TMP_SUFFIX):
                    Path(dirpath, name).unlink(missing_ok=True)
                    n += 1
    return n


def to_model_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """HxWx3 uint8 -> 3 x size x size float32 in [-1, 1], C-contiguous (a transposed view would make every
    np.stack of a batch a strided copy, and each runtime copy it again)."""
    if rgb.shape[:2] != (size, size):
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    x = np.empty((3, *rgb.shape[:2]), np.float32)
    np.divide(rgb.transpose(2, 0, 1), np.float32(127.5), out=x)  # x / 127.5 - 1 in float32, in two passes
    x -= 1.0
    return x


def from_model_output(x: np.ndarray) -> np.ndarray:
    """3 x H x W in [-1, 1] -> HxWx3 uint8; a batch [N, 3, H, W] -> [N, H, W, 3]."""
    return np.clip((np.moveaxis(x, -3, -1) + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)


def grid(images: list[np.ndarray], cols: int, pad: int = 2) -> np.ndarray:
    """Tile equally sized HxWx3 uint8 images into one picture (samples, progress snapshots)."""
    h, w = images[0].shape[:2]
    rows = (len(images) + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return out


def write_rgb(path: str | Path, rgb: np.ndarray) -> None:
    write(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
