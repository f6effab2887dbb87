"""What a user's folder holds besides plain images, and what gcomp does with it: photos turned by an EXIF tag,
FIFOs and devices named like images, a folder where an output belongs, 16-bit images written to 8-bit formats,
settings the backend cannot run, SIGTERM. (Found by a black-box run of the CLI, 2026-12-04.)"""
import json
import os
import signal
import struct
import sys
import time
import zlib

import cv2
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from gcomp.cli.app import app
from gcomp.engine import images
from gcomp.engine.headers import orient, read_header
from gcomp.engine.masks import MaskError, MaskSpec, read_mask_file

runner = CliRunner()


def _complete(src, out, *extra):
    return runner.invoke(app, ["complete", str(src), str(out), "--backend", "onnxruntime", "--no-progress", *extra])


def _errors(r):
    return [line for line in r.stderr.splitlines() if line.startswith("error:")]


def _exif(orientation: int, order: str = "II") -> bytes:
    """EXIF data (a TIFF structure) holding one tag: the orientation, a SHORT in IFD0."""
    e = "<" if order == "II" else ">"
    return order.encode() + struct.pack(f"{e}HI", 42, 8) + struct.pack(f"{e}H", 1) + \
        struct.pack(f"{e}HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(f"{e}I", 0)


def _jpeg_with(orientation: int, img: np.ndarray, order: str = "II") -> bytes:
    jpg = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 100])[1].tobytes()
    data = b"Exif\x00\x00" + _exif(orientation, order)
    return jpg[:2] + b"\xff\xe1" + struct.pack(">H", len(data) + 2) + data + jpg[2:]  # APP1 right after SOI


def _png_with(orientation: int, img: np.ndarray) -> bytes:
    png = cv2.imencode(".png", img)[1].tobytes()
    data = _exif(orientation, "MM")
    chunk = struct.pack(">I", len(data)) + b"eXIf" + data + struct.pack(">I", zlib.crc32(b"eXIf" + data))
    return png[:33] + chunk + png[33:]  # after the signature and IHDR (8 + 25 bytes)


def _picture(h=24, w=40, channels=3, dtype=np.uint8) -> np.ndarray:
    """No symmetry: every one of the eight orientations gives another array."""
    a = (np.arange(h * w * channels).reshape(h, w, channels) * 7 % 251).astype(dtype)
    return a * 257 if dtype == np.uint16 else a


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_opencv_applies_it(orientation):
    """JPEG (both byte orders) and PNG: the decoded image equals OpenCV's own orientation (its reader applies the tag
    in every mode but IMREAD_UNCHANGED); a mask file (read in grayscale) is turned the same way."""
    img = _picture()
    for buf in (_jpeg_with(orientation, img), _jpeg_with(orientation, img, "MM"), _png_with(orientation, img)):
        arr = np.frombuffer(buf, np.uint8)
        assert read_header(arr).orientation == orientation
        assert read_header(arr).size == (40, 24)  # the stored size (limits are checked on it before decoding)
        got = images.decode(arr).original
        want = cv2.imdecode(arr, cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH)
        assert got.shape == want.shape and np.array_equal(got, want)
        assert (got.shape[:2] == (40, 24)) == (orientation >= 5)
        gray = cv2.imdecode(arr, cv2.IMREAD_GRAYSCALE)
        assert gray.shape == got.shape[:2]  # what read_mask_file decodes: the same orientation


def test_orientation_keeps_alpha_and_16_bits():
    """The reason gcomp orients by itself: OpenCV's oriented modes drop alpha (and need ANYDEPTH for 16 bits)."""
    for channels, dtype in ((4, np.uint8), (4, np.uint16), (1, np.uint16), (3, np.uint16)):
        img = _picture(channels=channels, dtype=dtype)
        img = img[:, :, 0] if channels == 1 else img
        got = images.decode(np.frombuffer(_png_with(6, img), np.uint8)).original
        assert got.dtype == dtype and got.shape[2:] == img.shape[2:] and got.shape[:2] == (40, 24)
        assert np.array_equal(got, orient(img, 6))
        assert np.array_equal(got, np.rot90(img, -1))  # 6: turned 90 degrees clockwise to be upright


def test_an_exif_turned_jpeg_is_completed_upright_and_written_upright(tmp_path):
    """A phone photo stored sideways with its tag: completed as shown and written as shown (stored upright, no tag);
    its mask file is read the same way."""
    src = tmp_path / "in"
    src.mkdir()
    upright = _picture(96, 64)
    (src / "phone.jpg").write_bytes(_jpeg_with(6, np.ascontiguousarray(np.rot90(upright))))  # stored sideways
    r = _complete(src / "phone.jpg", tmp_path / "out.png")
    assert r.exit_code == 0, r.output
    out = cv2.imread(str(tmp_path / "out.png"), cv2.IMREAD_UNCHANGED)
    assert out.shape == (96, 64, 3)
    known = MaskSpec.parse("center").known("phone.jpg", (96, 64), 64, 0).astype(bool)
    shown = images.decode(np.fromfile(src / "phone.jpg", np.uint8)).original
    assert np.array_equal(out[known], shown[known])  # the known pixels are the input's, upright
    mask = tmp_path / "mask.jpg"  # a sideways-stored mask with the same tag: the hole lands where it is shown
    hole = np.zeros((96, 64), np.uint8)
    hole[:48] = 255
    mask.write_bytes(_jpeg_with(6, np.ascontiguousarray(np.rot90(hole))))
    assert np.array_equal(read_mask_file(mask) == 0, hole > 127)


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not os.path.exists("/dev/zero"), reason="FIFOs and /dev/zero: POSIX")
def test_fifos_devices_and_folders_named_like_images_fail_alone(tmp_path):
    """A FIFO named .png once hung the job (not even Ctrl-C stopped it) and a link to /dev/zero ended it with a
    MemoryError traceback: each is now one error line, and the rest completes."""
    from synth import make_faces

    src = tmp_path / "in"
    make_faces(src, n=1, size=64)
    os.mkfifo(src / "fifo.png")
    (src / "zero.png").symlink_to("/dev/zero")
    r = _complete(src, tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert sorted(_errors(r)) == [f"error: {src / 'fifo.png'}: not a regular file (a FIFO)",
                                  f"error: {src / 'zero.png'}: not a regular file (a device)"]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["face_00.png"]
    with pytest.raises(MaskError, match="fifo.png: not a regular file"):  # a mask file too
        read_mask_file(src / "fifo.png", key="face_00.png")


@pytest.mark.skipif(sys.platform == "win32", reason="the error's wording is POSIX's (EISDIR)")
def test_a_folder_where_an_output_belongs_is_an_error_not_a_finished_output(tmp_path):
    from synth import make_faces

    src, out = tmp_path / "in", tmp_path / "out"
    make_faces(src, n=2, size=64)
    (out / "face_00.png").mkdir(parents=True)
    r = _complete(src, out)
    assert r.exit_code == 1, r.output
    assert _errors(r) == [f"error: {src / 'face_00.png'}: cannot write {out / 'face_00.png'}: Is a directory"]
    assert (out / "face_01.png").is_file()
    summary = json.loads((out / "gcomp-summary.json").read_text())
    assert (summary["skipped"], summary["done"], summary["n_failed"]) == (0, 1, 1)  # it was counted as skipped


def test_a_search_the_backend_cannot_run_is_refused_before_the_output_exists(tmp_path):
    from synth import make_faces

    src = tmp_path / "in"
    make_faces(src, n=1, size=64)
    r = _complete(src, tmp_path / "out", "--optimizer", "adam", "--iters", "2")
    assert r.exit_code == 2, r.output
    assert _errors(r) == ["error: the onnxruntime backend runs the seed's momentum optimizer only (got adam); use "
                          "--backend torch for adam"]
    assert not (tmp_path / "out").exists()
    assert _complete(src, tmp_path / "out", "--optimizer", "adam").exit_code == 0  # 0 iterations: nothing searches


def test_one_input_that_is_no_image_format_is_refused(tmp_path):
    gif = tmp_path / "g.gif"
    gif.write_bytes(b"GIF89a" + b"\x00" * 32)
    r = _complete(gif, tmp_path / "out")
    assert r.exit_code == 2 and not (tmp_path / "out").exists()
    assert _errors(r) == [f"error: {gif}: .gif is not an image format gcomp reads ({', '.join(images.SUFFIXES)})"]


def test_16_bit_and_float_images_written_to_8_bit_formats():
    """WebP is 8-bit only: a 16-bit image came out clipped (nearly white); a float image in a JPEG came out black."""
    smooth = np.broadcast_to(np.linspace(20, 230, 32).astype(np.uint8)[None, :, None], (32, 32, 3)).copy()
    img16 = smooth.astype(np.uint16) * 257
    for suffix in (".webp", ".jpg", ".bmp"):
        back = cv2.imdecode(np.frombuffer(images.encode(img16, suffix), np.uint8), cv2.IMREAD_UNCHANGED)
        assert back.dtype == np.uint8
        assert np.abs(back.astype(int) - img16 // 257).mean() < 3, suffix
    back = cv2.imdecode(np.frombuffer(images.encode(smooth.astype(np.float32) / 255, ".jpg"), np.uint8),
                        cv2.IMREAD_UNCHANGED)
    assert np.abs(back.astype(int) - smooth).mean() < 3


def test_a_float_image_keeps_its_alpha():
    rgba = _picture(16, 16, channels=4).astype(np.float32) / 255
    out = images.like_original(np.zeros((16, 16, 3), np.uint8), rgba)
    assert out.dtype == np.float32 and np.array_equal(out[:, :, 3], rgba[:, :, 3])


def test_a_strokes_count_past_what_covers_an_image_is_refused():
    with pytest.raises(MaskError, match="strokes count must be an integer from 1 to 1000, got 100000"):
        MaskSpec.parse("strokes:100000")
    assert MaskSpec.parse("strokes:1000").param == 1000


def test_the_pixel_limit_message_does_not_round_to_the_limit(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 2_000_000)
    with pytest.raises(images.ImageError, match=r"1500x1500 is 2\.25 megapixels, over the limit of 2 "):
        images.check_size(1500, 1500, "big.png")


def test_sigterm_stops_a_job_as_ctrl_c_does_with_143():
    """`kill`, `timeout`, docker stop and Kubernetes send SIGTERM: the handler turns it into the KeyboardInterrupt
    that Ctrl-C raises (so the job stops on Ctrl-C's path, tested in test_reliability: finished outputs whole, the
    summary, the line on how far it got), and the status is 128 + 15; the previous handler is restored."""
    from gcomp.cli.complete_cmd import _interrupted

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(typer.Exit) as e:
        with _interrupted():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at once and ends the sleep
    assert e.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_a_webp_exif_orientation_is_applied_too():
    pil = pytest.importorskip("PIL.Image", reason="Pillow writes the WebP with an EXIF chunk")
    import io

    exif = pil.Exif()
    exif[0x0112] = 8
    b = io.BytesIO()
    pil.fromarray(_picture()[:, :, ::-1]).save(b, "WEBP", lossless=True, exif=exif.tobytes())
    arr = np.frombuffer(b.getvalue(), np.uint8)
    assert read_header(arr).orientation == 8
    got = images.decode(arr).original
    assert got.shape == (40, 24, 3)
    assert np.array_equal(got, cv2.imdecode(arr, cv2.IMREAD_ANYCOLOR))


def test_an_input_named_like_gcomp_s_temporary_files_is_completed(tmp_path):
    """Temporary outputs end in .tmp; an image whose name merely starts like one was left out of the count."""
    from synth import make_faces

    src = tmp_path / "in"
    face = make_faces(src, n=1, size=64)[0]
    face.rename(src / ".gcomp-s0of1-keep.png")
    r = _complete(src, tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / ".gcomp-s0of1-keep.png").is_file()


def test_the_summary_states_each_failure_as_stderr_does(tmp_path):
    """A mask's error named the image by its key in the summary (`a.png: mask ...`) but by its path on stderr."""
    from synth import make_faces

    src, masks = tmp_path / "in", tmp_path / "masks"
    make_faces(src, n=2, size=64)
    masks.mkdir()
    cv2.imwrite(str(masks / "face_00.png"), np.zeros((32, 32), np.uint8))  # the wrong size
    cv2.imwrite(str(masks / "face_01.png"), np.where(np.arange(64)[:, None] < 32, 255, 0).astype(np.uint8).repeat(64, 1))
    (src / "bad.png").write_bytes(b"not a png")
    r = _complete(src, tmp_path / "out", "--mask", str(masks))
    assert r.exit_code == 1, r.output
    summary = json.loads((tmp_path / "out" / "gcomp-summary.json").read_text())
    assert sorted(f"error: {f['error']}" for f in summary["failed"]) == sorted(_errors(r))
    assert len(_errors(r)) == 2 and all(line.startswith(f"error: {src}/") for line in _errors(r)), r.stderr


def test_an_empty_path_is_refused_not_taken_as_the_current_folder(tmp_path, monkeypatch):
    """`gcomp complete "$IN" "$OUT"` with OUT unset wrote into the current folder."""
    from synth import make_faces

    face = make_faces(tmp_path / "in", n=1, size=64)[0]
    monkeypatch.chdir(tmp_path)
    for args, line in (([str(face), ""], "error: OUTPUT is an empty path (an unset variable?): name a file or folder"),
                       (["", "out"], "error: INPUT is an empty path (an unset variable?): name a file or folder"),
                       ([str(face), "out", "--mask", ""], "error: mask '' (--mask) is empty: a kind (center, random, "
                                                          "...) or a mask file or folder")):
        r = runner.invoke(app, ["complete", *args, "--no-progress"])
        assert r.exit_code == 2 and _errors(r) == [line], r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_a_mask_folder_with_several_masks_for_an_image(tmp_path):
    """The first of a.bmp / a.png was taken silently (and a.png.bak matched a.*)."""
    masks = tmp_path / "masks"
    masks.mkdir()
    half = np.where(np.arange(64)[:, None] < 32, 255, 0).astype(np.uint8).repeat(64, 1)
    cv2.imwrite(str(masks / "a.bmp"), half)
    cv2.imwrite(str(masks / "a.png"), 255 - half)
    spec = MaskSpec.parse(str(masks))
    assert spec._find_in_folder("a.png") == masks / "a.png"  # the one named as the image
    with pytest.raises(MaskError, match=r"a.jpg: 2 masks in .* for it \(a.bmp, a.png\) and none named a.jpg: keep one"):
        spec._find_in_folder("a.jpg")
    (masks / "a.png").rename(masks / "a.png.bak")
    assert spec._find_in_folder("a.jpg") == masks / "a.bmp"  # one left: a.png.bak is another stem


def test_a_file_name_with_a_line_break_keeps_its_error_on_one_line(tmp_path, capfd):
    from gcomp.engine.jobs import to_stderr

    to_stderr("error: in/bad\nname.png: not a readable image")
    assert capfd.readouterr().err == "error: in/bad\\nname.png: not a readable image\n"


def test_a_sidecar_beside_a_mask_is_not_a_second_mask(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    cv2.imwrite(str(masks / "a.png"), np.zeros((8, 8), np.uint8))
    (masks / "a.xmp").write_text("<x:xmpmeta/>")  # what a photo editor leaves beside an image
    assert MaskSpec.parse(str(masks))._find_in_folder("a.jpg") == masks / "a.png"


def test_ray_init_does_not_take_over_sigterm():
    """ray.init installs its own SIGTERM handler (sys.exit): `gcomp complete --ray` then ended with status 15, no
    line on how far it got and no summary. The driver puts the caller's handler back."""
    from gcomp.engine import ray_driver

    class FakeRay:
        def is_initialized(self):
            return False

        def init(self, **kw):
            signal.signal(signal.SIGTERM, lambda *a: os._exit(15))

    def mine(*a):
        pass

    before = signal.signal(signal.SIGTERM, mine)
    try:
        assert ray_driver._connect_keeping_sigterm(FakeRay(), "local", 1) is True
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, before)


def test_an_image_opencv_refuses_to_hold_fails_alone(tmp_path):
    """A 70-byte BMP whose header claims 40000x40000: cv2.imdecode raises (it does not return None), which ended the
    whole job with a traceback and no summary."""
    from synth import make_faces

    src = tmp_path / "in"
    make_faces(src, n=1, size=64)
    (src / "bomb.bmp").write_bytes(b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) +
                                   struct.pack("<IiiHHIIiiII", 40, 40000, 40000, 1, 24, 0, 0, 0, 0, 0, 0) + b"\0" * 16)
    r = _complete(src, tmp_path / "out")
    assert r.exit_code == 1, r.output
    assert _errors(r) == [f"error: {src / 'bomb.bmp'}: not a readable image (pixels <= CV_IO_MAX_IMAGE_PIXELS)"]
    assert (tmp_path / "out" / "face_00.png").is_file() and (tmp_path / "out" / "gcomp-summary.json").is_file()


def test_a_large_webp_or_png_keeps_its_orientation():
    """A WebP's EXIF chunk follows its image data, a PNG's eXIf may follow a large text chunk: past the first 64 KiB,
    where the header was read, so a real photo's tag was missed (the mask, read by OpenCV, was turned)."""
    pil = pytest.importorskip("PIL.Image", reason="Pillow writes WebP and PNG with EXIF")
    from PIL import PngImagePlugin
    import io

    exif = pil.Exif()
    exif[0x0112] = 6
    img = np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8)  # noise: > 64 KiB encoded
    text = PngImagePlugin.PngInfo()
    text.add_text("comment", "x" * 70_000)
    for fmt, kw in (("WEBP", {"lossless": True}), ("WEBP", {"quality": 90}), ("PNG", {"pnginfo": text})):
        b = io.BytesIO()
        pil.fromarray(img).save(b, fmt, exif=exif.tobytes(), **kw)
        arr = np.frombuffer(b.getvalue(), np.uint8)
        assert arr.size > 65536 and read_header(arr).orientation == 6, fmt
        assert images.decode(arr).original.shape[:2] == (600, 400) == cv2.imdecode(arr, cv2.IMREAD_GRAYSCALE).shape
    assert read_header(arr).size == (600, 400)  # the PNG's stored size; WebP's too (VP8X / VP8 / VP8L):
    b = io.BytesIO()
    pil.fromarray(img).save(b, "WEBP", lossless=True)
    assert read_header(np.frombuffer(b.getvalue(), np.uint8)).size == (600, 400)
