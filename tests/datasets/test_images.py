"""Every pixel mode PIL decodes is read into its real range, or refused by file name: real files of each
mode, written by PIL, against the values computed here independently."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from datasets.bases import read_image
from utils.errors import UserError

GREY = np.array([[0, 1000, 4095], [30000, 65535, 12345]], dtype=np.uint16)  # (H, W) 16-bit values


def _pixels(path) -> np.ndarray:
    img = read_image(str(path))
    assert img.mode == "RGB"
    return np.asarray(img).astype(int)


def _grey(path) -> np.ndarray:
    rgb = _pixels(path)
    assert (rgb == rgb[..., :1]).all()
    return rgb[..., 0]


@pytest.mark.parametrize("fmt", ["png", "tif"])
def test_16_bit_grey_scaled_by_its_depth_not_clipped(tmp_path, fmt):
    path = tmp_path / f"ti.{fmt}"
    Image.fromarray(GREY).save(path)
    assert Image.open(path).mode == "I;16"
    assert (_grey(path) == np.rint(GREY / 65535 * 255)).all()   # white only where the value is 65535


def test_16_bit_png_with_significant_bits_uses_them(tmp_path):
    """A 12-bit camera in a 16-bit PNG declares 12 significant bits (sBIT): 4095 is white, not 6% grey."""
    values = np.array([[0, 2048, 4095]], dtype=np.uint16)
    path = tmp_path / "twelve.png"
    Image.fromarray(values).save(path)
    data = path.read_bytes()
    at = 8 + 25  # after the signature and IHDR: an sBIT chunk saying 12
    chunk = struct.pack(">I4sB", 1, b"sBIT", 12) + struct.pack(">I", zlib.crc32(b"sBIT\x0c"))
    path.write_bytes(data[:at] + chunk + data[at:])
    assert (_grey(path) == np.rint(values / 4095 * 255)).all()
    values[0, 0] = 5000                                            # beyond the declared 12 bits
    Image.fromarray(values).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:at] + chunk + data[at:])
    with pytest.raises(UserError, match=rf"^cannot read image {path}: pixel values in \[2048, 5000\] do not fit "
                                        r"its 12-bit depth$"):
        read_image(str(path))


def test_integer_and_float_grey(tmp_path):
    path = tmp_path / "int32.tif"
    Image.fromarray(np.array([[0, 2**31 - 1]], dtype=np.int32), "I").save(path)
    assert (_grey(path) == [[0, 255]]).all()
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F").save(path)
    assert (_grey(path) == [[0, 128, 255]]).all()
    kelvin = tmp_path / "kelvin.tif"
    Image.fromarray(np.array([[290.5, 310.0]], dtype=np.float32), "F").save(kelvin)
    with pytest.raises(UserError, match=rf"^cannot read image {kelvin}: 32-bit float pixels in \[290.5, 310\], "
                                        r"not in \[0, 1\]"):
        read_image(str(kelvin))


def test_eight_bit_modes(tmp_path):
    cases = {  # mode: (image, expected RGB of its first pixel)
        "1": (Image.new("1", (2, 2), 1), (255, 255, 255)),
        "L": (Image.new("L", (2, 2), 77), (77, 77, 77)),
        "LA": (Image.new("LA", (2, 2), (77, 10)), (77, 77, 77)),
        "RGBA": (Image.new("RGBA", (2, 2), (10, 20, 30, 0)), (10, 20, 30)),
        "CMYK": (Image.new("CMYK", (2, 2), (0, 0, 0, 128)), (127, 127, 127)),
    }
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    cases["P"] = (palette, (200, 100, 50))
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    cases["P+transparency"] = (transparent, (200, 100, 50))
    for name, (img, expected) in cases.items():
        path = tmp_path / f"{name}.{'tif' if img.mode == 'CMYK' else 'png'}"
        img.save(path)
        assert tuple(_pixels(path)[0, 0]) == expected, name


def test_unsupported_modes_are_refused_by_name(tmp_path):
    lab = tmp_path / "lab.tif"
    Image.new("LAB", (2, 2), (50, 0, 0)).save(lab)   # PIL's LAB -> RGB is a channel copy, not a conversion
    with pytest.raises(UserError, match=rf"^cannot read image {lab}: pixel mode LAB is not supported"):
        read_image(str(lab))


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` grey pixels (and a token of image data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [10_000, 30_000])   # above PIL's warning bound, and above its error bound
def test_decompression_bombs_are_refused_before_decoding(tmp_path, side, recwarn):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header(side, side))
    with pytest.raises(UserError, match=rf"^cannot read image {path}: more than \d+ pixels \(a decompression bomb"):
        read_image(str(path))
    assert not recwarn.list


def test_special_files_are_refused_without_opening(tmp_path):
    fifo = tmp_path / "000001_cam1_0_00.jpg"
    os.mkfifo(fifo)                                   # opening it would wait for a writer forever
    with pytest.raises(UserError, match=rf"^cannot read image {fifo}: it is a FIFO, not an image file$"):
        read_image(str(fifo))
    device = tmp_path / "000002_cam1_0_00.jpg"
    os.symlink("/dev/zero", device)
    with pytest.raises(UserError, match="it is a character device"):
        read_image(str(device))
    folder = tmp_path / "000003_cam1_0_00.jpg"
    folder.mkdir()
    with pytest.raises(UserError, match="it is a folder"):
        read_image(str(folder))


def test_a_plain_rgb_jpeg_is_unchanged(tmp_path):
    path = tmp_path / "rgb.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (8, 4, 3), dtype=np.uint8)).save(path, quality=95)
    assert (np.asarray(read_image(str(path))) == np.asarray(Image.open(path).convert("RGB"))).all()
