"""fastpix.data.decode: native decoding equals PIL's, the A|B split, PIL-exact bicubic resize, the bomb guard,
and bad input (fuzzed) that raises or reports an error naming the file, never crashes."""

import io
import struct

import numpy as np
import PIL
import pytest
from PIL import Image
from source_wheel import build_wheel

from fastpix.data import decode as D

native = pytest.mark.skipif(
    D.backend() != "native", reason="fastpix._decode not built (run `python setup.py build_ext --inplace`)"
)
BICUBIC = Image.Resampling.BICUBIC


def textured(h, w, c=3, seed=0):
    """Gradients plus noise: smooth areas and edges, like photos, so resampling and chroma paths are exercised."""
    rng = np.random.RandomState(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 3 + y) % 256, (y * 2) % 256, (x * y // 7) % 256], -1)[..., :c]
    return np.clip(base + rng.randint(0, 40, (h, w, c)), 0, 255).astype(np.uint8)


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def pil_decode(data, mode):
    arr = np.asarray(Image.open(io.BytesIO(data)).convert(mode))
    return arr.reshape(arr.shape[0], arr.shape[1], -1)


def pil_pair(data, mode_a, mode_b, size):
    """The reference chain: open, convert('RGB'), crop at int(w/2), Grayscale, Resize(BICUBIC)."""
    ab = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = ab.size
    w2 = int(w / 2)
    out = []
    for box, mode in (((0, 0, w2, h), mode_a), ((w2, 0, w, h), mode_b)):
        half = ab.crop(box)
        if mode == "L":
            half = half.convert("L")
        if size is not None:
            half = half.resize(size, BICUBIC)
        arr = np.asarray(half)
        out.append(arr.reshape(arr.shape[0], arr.shape[1], -1))
    return out


RGB = Image.fromarray(textured(67, 133))


def sample_images():
    cases = {}
    for ss in (0, 1, 2):  # PIL: 0 = 4:4:4, 1 = 4:2:2, 2 = 4:2:0
        for progressive in (False, True):
            cases[f"jpeg-ss{ss}-{'prog' if progressive else 'base'}"] = encode(
                RGB, "JPEG", subsampling=ss, progressive=progressive, quality=90
            )
    cases["jpeg-grey"] = encode(RGB.convert("L"), "JPEG")
    cases["jpeg-cmyk"] = encode(RGB.convert("CMYK"), "JPEG")
    for mode in ("1", "L", "LA", "RGB", "RGBA"):
        cases[f"png-{mode}"] = encode(RGB.convert(mode), "PNG")
    cases["png-P"] = encode(RGB.quantize(60), "PNG")
    cases["png-P-trns"] = encode(RGB.quantize(60), "PNG", transparency=3)
    cases["png-P4"] = encode(RGB.quantize(16), "PNG", bits=4)  # a packed 4-bit palette
    grey16 = textured(67, 133, 1)[..., 0].astype(np.uint16) * 3  # values above 255 too: PIL clips those
    cases["png-I;16"] = encode(Image.fromarray(grey16), "PNG")
    return cases


def png_16bit(arr16, color_type):
    """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB/RGBA/LA)."""
    import zlib

    h, w = arr16.shape[:2]
    raw = b"".join(b"\x00" + arr16[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def images():
    cases = sample_images()
    rng = np.random.RandomState(5)
    cases["png-RGB16"] = png_16bit(rng.randint(0, 65536, (9, 11, 3)), 2)
    cases["png-RGBA16"] = png_16bit(rng.randint(0, 65536, (9, 11, 4)), 6)
    cases["png-LA16"] = png_16bit(rng.randint(0, 65536, (9, 11, 2)), 4)
    return cases


# ------------------------------------------------------------------------------------------- equality with PIL


@native
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_native_decode_equals_pil(images, mode, tmp_path):
    for name, data in images.items():
        ref = pil_decode(data, mode)
        got = D.decode_image(data, mode)
        assert got.dtype == np.uint8 and got.shape == ref.shape, name
        assert np.array_equal(got, ref), f"{name}: max diff {np.abs(got.astype(int) - ref).max()}"
        path = tmp_path / f"{name}.img"
        path.write_bytes(data)
        assert np.array_equal(D.decode_image(path, mode), ref), name


YCCK_WRITER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <jpeglib.h>
/* ycck OUT W H < CMYK bytes: a YCCK JPEG (libjpeg converts CMYK to YCCK and writes the Adobe marker). */
int main(int argc, char** argv) {
    int w = atoi(argv[2]), h = atoi(argv[3]);
    unsigned char* px = malloc((size_t)w * h * 4);
    if (fread(px, 1, (size_t)w * h * 4, stdin) != (size_t)w * h * 4) return 1;
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    FILE* f = fopen(argv[1], "wb");
    jpeg_stdio_dest(&c, f);
    c.image_width = w; c.image_height = h; c.input_components = 4; c.in_color_space = JCS_CMYK;
    jpeg_set_defaults(&c);
    jpeg_set_colorspace(&c, JCS_YCCK);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = px + (size_t)c.next_scanline * w * 4;
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    fclose(f);
    return 0;
}
"""


@native
def test_ycck_jpeg_equals_pil(tmp_path):
    """PIL cannot write YCCK, so a few lines of C against the libjpeg the extension was built with write one."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "the native decoder was built, so a C compiler exists"
    flags = subprocess.run(
        ["pkg-config", "--cflags", "--libs", "libjpeg"], capture_output=True, text=True, check=True
    ).stdout.split()
    (tmp_path / "ycck.c").write_text(YCCK_WRITER)
    subprocess.run([cc, "-O1", "-o", str(tmp_path / "ycck"), str(tmp_path / "ycck.c"), *flags], check=True)
    cmyk = np.concatenate([textured(37, 70), textured(37, 70, 1, seed=3)], -1)
    out = tmp_path / "ycck.jpg"
    subprocess.run([str(tmp_path / "ycck"), str(out), "70", "37"], input=cmyk.tobytes(), check=True)
    data = out.read_bytes()
    assert b"Adobe" in data and Image.open(out).mode == "CMYK"
    with Image.open(out) as im:
        im.load()
    for mode in ("RGB", "L"):
        ref = pil_decode(data, mode)
        got = D.decode_image(out, mode)
        assert np.array_equal(got, ref), f"{mode}: max diff {np.abs(got.astype(int) - ref).max()}"
    a, b = D.decode_pair(out, size=(20, 30))
    ra, rb = pil_pair(data, "RGB", "RGB", (20, 30))
    assert np.array_equal(a, ra) and np.array_equal(b, rb)


def test_file_names_that_are_not_utf8(tmp_path):
    """Linux file names are bytes; the reference (PIL) opens any. So does every entry point here."""
    import os
    import pathlib

    arr = textured(6, 10)
    name = os.path.join(os.fsdecode(bytes(tmp_path)), os.fsdecode(b"caf\xe9.png"))
    Image.fromarray(arr).save(name, "PNG")
    a, b = D.decode_pair(name)
    assert np.array_equal(a, arr[:, :5]) and np.array_equal(b, arr[:, 5:])
    assert np.array_equal(D.decode_image(pathlib.Path(name)), arr)
    out_a, out_b = np.zeros((2, 6, 5, 3), np.uint8), np.zeros((2, 6, 5, 3), np.uint8)
    errors = D.decode_pairs_into([name, name + "x"], out_a, out_b, (5, 6))
    assert errors[0] is None and np.array_equal(out_a[0], arr[:, :5]) and np.array_equal(out_b[0], arr[:, 5:])
    assert errors[1].startswith(name + "x")


def test_grey_formula_is_pils():
    rgb = textured(31, 29)
    ref = np.asarray(Image.fromarray(rgb).convert("L"))
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    assert np.array_equal(ref, (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)


@pytest.mark.parametrize("modes", [("RGB", "RGB"), ("L", "RGB"), ("RGB", "L")])
@pytest.mark.parametrize("size", [None, (286, 286), (32, 20)])
def test_decode_pair_equals_reference_chain(images, modes, size):
    for name in ("jpeg-ss2-base", "jpeg-grey", "png-RGBA", "png-P"):
        data = images[name]
        a, b = D.decode_pair(data, *modes, size=size)
        ra, rb = pil_pair(data, *modes, size)
        assert np.array_equal(a, ra) and np.array_equal(b, rb), (name, modes, size)


def test_pil_fallback_formats(tmp_path):
    """BMP/TIFF/WebP are not decoded natively: they fall back to PIL with identical results."""
    for fmt in ("BMP", "TIFF", "WEBP"):
        data = encode(RGB, fmt)
        a, b = D.decode_pair(data, size=(40, 30))
        ra, rb = pil_pair(data, "RGB", "RGB", (40, 30))
        assert np.array_equal(a, ra) and np.array_equal(b, rb), fmt
        assert np.array_equal(D.decode_image(data, "L"), pil_decode(data, "L"))


def test_pil_path_without_extension(images, monkeypatch):
    monkeypatch.setattr(D, "_native", None)
    assert D.backend() == "pil"
    for name in ("jpeg-ss1-prog", "png-LA"):
        data = images[name]
        got = D.decode_pair(data, "RGB", "L", size=(50, 40))
        ref = pil_pair(data, "RGB", "L", (50, 40))
        assert all(np.array_equal(g, r) for g, r in zip(got, ref))
        assert np.array_equal(D.decode_image(data), pil_decode(data, "RGB"))
    with pytest.raises(D.DecodeError, match="<bytes>"):
        D.decode_image(b"garbage")


# ------------------------------------------------------------------------------------------- split and resize


@pytest.mark.parametrize("width", [2, 3, 7, 133, 134])
def test_split_at_int_half_width(width):
    arr = textured(5, width)
    data = encode(Image.fromarray(arr), "PNG")
    a, b = D.decode_pair(data)
    w2 = int(width / 2)
    assert np.array_equal(a, arr[:, :w2]) and np.array_equal(b, arr[:, w2:])


PILLOW_MAJOR = int(PIL.__version__.split(".")[0])


def pillow_orders_passes_like_ours(src, dst) -> bool:
    """fastpix follows Pillow >= 13 (python-pillow/Pillow#9549), which runs the vertical pass first when the height
    shrinks most (h > dh and h - dh > 2·(w - dw)); older Pillow always goes horizontal first, and then differs there
    by rounding between the passes. Comparisons with an older installed Pillow leave those cases out."""
    (w, h), (dw, dh) = src, dst
    return PILLOW_MAJOR >= 13 or not (h > dh and h - dh > 2 * (w - dw))


@native
@pytest.mark.parametrize(
    "src,dst",
    [
        ((256, 256), (286, 286)),
        ((600, 600), (286, 286)),
        ((37, 37), (64, 64)),
        ((133, 67), (50, 77)),
        ((133, 67), (133, 31)),
        ((133, 67), (41, 67)),
        ((5, 3), (286, 286)),
        ((1023, 511), (286, 286)),
        ((286, 286), (286, 286)),
        ((67, 133), (50, 77)),
    ],
)  # height shrinks most: Pillow 13 goes vertical first
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("kernels", ["simd", "portable"])
def test_resize_equals_pil(src, dst, channels, kernels):
    from fastpix import _decode

    if not pillow_orders_passes_like_ours(src, dst):
        pytest.skip(f"Pillow {PIL.__version__} orders the passes of this resize as Pillow < 13 did")
    arr = textured(src[1], src[0], channels, seed=src[0])
    ref = np.asarray(Image.fromarray(arr if channels == 3 else arr[..., 0]).resize(dst, BICUBIC))
    _decode._portable_resize_only(kernels == "portable")
    try:
        got = _decode.resize(arr, *dst)
    finally:
        _decode._portable_resize_only(False)
    diff = np.abs(got.astype(int) - ref.reshape(got.shape)).max()
    assert diff == 0, f"max diff {diff}"  # the target was ±1; the implementation is exact


@native
@pytest.mark.parametrize("kernels", ["simd", "portable"])
def test_resize_equals_pil_over_many_sizes(kernels):
    """Random up- and downscales from 1 to 700 pixels a side, grey and RGB, on images with hard 0/255 edges (the
    cubic's overshoot must clip as PIL's does) and noise, so both pass orders and the transposes' edge pixels are
    hit. The AVX2 kernel (where the CPU has it) and the scalar one must both equal PIL everywhere."""
    from fastpix import _decode

    rng = np.random.RandomState(7)
    for case in range(40):
        sw, sh, dw, dh = (int(v) for v in rng.randint(1, 40 if case < 15 else 700, 4))
        channels = (1, 3)[case % 2]
        if not pillow_orders_passes_like_ours((sw, sh), (dw, dh)):
            continue
        arr = (
            np.where(rng.rand(sh, sw, 1) < 0.5, 0, 255).astype(np.uint8)
            if case % 3 == 0
            else rng.randint(0, 256, (sh, sw, 1)).astype(np.uint8)
        )
        arr = np.ascontiguousarray(
            np.repeat(arr, channels, -1) if case % 4 else rng.randint(0, 256, (sh, sw, channels)).astype(np.uint8)
        )
        ref = np.asarray(Image.fromarray(arr if channels == 3 else arr[..., 0]).resize((dw, dh), BICUBIC))
        _decode._portable_resize_only(kernels == "portable")
        try:
            got = _decode.resize(arr, dw, dh)
        finally:
            _decode._portable_resize_only(False)
        diff = np.abs(got.astype(int) - ref.reshape(got.shape))
        assert diff.max() == 0, f"{sw}x{sh}x{channels} -> {dw}x{dh}: {np.count_nonzero(diff)} pixels differ"


@native
def test_draft_is_close_to_exact():
    """draft=True decodes JPEGs at reduced DCT scale: close to PIL, not equal. Measured 1200×600 → 286² halves:
    photo-like (smooth + blurred noise) mean |diff| 0.35, max 3; hard synthetic texture mean 5.2, max 59."""
    from PIL import ImageFilter

    rng = np.random.RandomState(0)
    y, x = np.mgrid[0:600, 0:1200]
    ramp = np.stack([x * 255 // 1199, y * 255 // 599, (x + y) * 255 // 1798], -1)
    noisy = np.clip(ramp + rng.randint(-20, 20, ramp.shape), 0, 255).astype(np.uint8)
    data = encode(Image.fromarray(noisy).filter(ImageFilter.GaussianBlur(1.5)), "JPEG", quality=90)
    exact = D.decode_pair(data, size=(286, 286))
    fast = D.decode_pair(data, size=(286, 286), draft=True)
    for e, f in zip(exact, fast):
        d = np.abs(e.astype(int) - f)
        assert d.mean() < 1 and d.max() <= 8, (d.mean(), d.max())
    # Below half the source only; otherwise draft changes nothing.
    assert all(
        np.array_equal(x, y)
        for x, y in zip(D.decode_pair(data, size=(400, 400), draft=True), D.decode_pair(data, size=(400, 400)))
    )


# ------------------------------------------------------------------------------------------- batch decoding


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_pairs_into(images, tmp_path, threads):
    import torch

    names = ["jpeg-ss0-base", "jpeg-cmyk", "png-I;16", "png-P-trns"]
    paths = []
    for name in names:
        paths.append(tmp_path / f"{name}.img")
        paths[-1].write_bytes(images[name])
    bmp = tmp_path / "x.bmp"
    bmp.write_bytes(encode(RGB, "BMP"))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(images["jpeg-ss2-base"][:300])
    paths += [bmp, bad, tmp_path / "missing.png"]
    n, size = len(paths), (48, 40)
    out_a = torch.full((n, 40, 48, 3), 7, dtype=torch.uint8)
    out_b = np.full((n, 40, 48, 1), 7, dtype=np.uint8)
    errors = D.decode_pairs_into(paths, out_a, out_b, size, modes=("RGB", "L"), threads=threads)
    assert errors[:5] == [None] * 5
    assert str(bad) in errors[5] and "truncated" in errors[5].lower()
    assert str(paths[6]) in errors[6]
    for i, p in enumerate(paths[:5]):
        ra, rb = pil_pair(p.read_bytes(), "RGB", "L", size)
        assert np.array_equal(out_a[i].numpy(), ra) and np.array_equal(out_b[i], rb), p
    assert not out_a[5:].any() and not out_b[5:].any()  # failed slots are zeroed


def test_decode_pairs_into_rejects_wrong_buffers(tmp_path):
    with pytest.raises(ValueError, match="shape"):
        D.decode_pairs_into(["x"], np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 4, 5, 3), np.uint8), (4, 4))
    with pytest.raises(ValueError, match="uint8"):
        D.decode_pairs_into(["x"], np.zeros((1, 4, 4, 3), np.float32), np.zeros((1, 4, 4, 3), np.uint8), (4, 4))


# ------------------------------------------------------------------------------------------- bad input


def jpeg_claiming(width, height):
    data = bytearray(encode(RGB, "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_bomb_guard_refuses_from_header(tmp_path):
    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg_claiming(65000, 65000))
    for call in (lambda: D.decode_image(path), lambda: D.decode_pair(path, size=(286, 286))):
        with pytest.raises(D.DecodeError, match="bomb.jpg.*(exceeds|DecompressionBomb|decompression bomb)"):
            call()
    errors = D.decode_pairs_into([path], np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8), (8, 8))
    assert "bomb.jpg" in errors[0] and "exceeds" in errors[0]
    png = bytearray(encode(RGB, "PNG"))  # IHDR re-sized to 100000×100000, CRC fixed so only the size is wrong
    import zlib

    png[16:24] = struct.pack(">II", 100000, 100000)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    with pytest.raises(D.DecodeError, match="<bytes>.*(exceeds|DecompressionBomb|decompression bomb)"):
        D.decode_image(bytes(png))
    small = encode(RGB, "PNG")  # 133×67 = 8911 pixels
    with pytest.raises(D.DecodeError, match="exceeds"):
        D.decode_image(small, max_pixels=8910)
    assert D.decode_image(small, max_pixels=8911).shape == (67, 133, 3)


def test_truncated_jpeg_raises_like_pil(images):
    data = images["jpeg-ss2-base"][:-200]
    with pytest.raises(OSError, match="truncated"):
        Image.open(io.BytesIO(data)).convert("RGB")
    with pytest.raises(D.DecodeError, match="truncated"):
        D.decode_image(data)


def test_header_only_png_and_empty(tmp_path):
    png = encode(RGB, "PNG")
    cases = (("header.png", png[:33]), ("empty.png", b""), ("sig.png", png[:8]), ("cut.png", png[: len(png) // 2]))
    for name, data in cases:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(D.DecodeError, match=name):
            D.decode_pair(p)


def mutants(seed, count):
    rng = np.random.RandomState(seed)
    bases = list(sample_images().values())
    for i in range(count):
        data = bytearray(bases[i % len(bases)])
        kind = i % 5
        if kind == 0:
            data = data[: rng.randint(0, len(data))]
        elif kind == 1:
            for pos in rng.randint(0, len(data), rng.randint(1, 8)):
                data[pos] ^= 1 << rng.randint(0, 8)
        elif kind == 2:
            pos = rng.randint(2, 200)  # headers: markers, sizes, tables
            data[pos] = rng.randint(0, 256)
        elif kind == 3:
            data = data[: rng.choice([2, 3, 8, 16])] + rng.bytes(rng.randint(0, 300))
        else:
            data = rng.bytes(rng.randint(0, 64))
        yield bytes(data)


def test_fuzz_never_crashes(tmp_path):
    count = 2500
    paths = []
    for i, data in enumerate(mutants(1234, count)):
        paths.append(tmp_path / f"m{i:04d}.img")
        paths[-1].write_bytes(data)
    decoded = 0
    for p in paths[:1200]:
        try:
            a, b = D.decode_pair(p, size=(16, 16))
            assert a.shape == b.shape == (16, 16, 3)
            decoded += 1
        except D.DecodeError as exc:
            assert str(p) in str(exc)
    n = len(paths)
    out_a, out_b = np.zeros((n, 16, 16, 3), np.uint8), np.zeros((n, 16, 16, 1), np.uint8)
    errors = D.decode_pairs_into(paths, out_a, out_b, (16, 16), modes=("RGB", "L"), threads=2)
    assert len(errors) == n
    for p, e in zip(paths, errors):
        assert e is None or str(p) in e
    assert 0 < sum(e is None for e in errors) < n
    assert 0 < decoded < 1200


def test_install_without_image_headers_builds_a_pil_only_fastpix(tmp_path):
    """setup.py with no libjpeg/libpng visible to pkg-config: the wheel builds, without fastpix._decode, and
    fastpix without the extension reports the PIL backend."""
    import subprocess
    import sys
    import zipfile

    wheel = build_wheel(tmp_path, ("csrc", "fastpix", "kernels", "bench/suites"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastpix/data/decode.py" in names and not any("_decode" in n for n in names), names
    probe = (
        "import sys; sys.modules['fastpix._decode'] = None; from fastpix.data import decode; print(decode.backend())"
    )
    assert (
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.strip()
        == "pil"
    )
