"""Hostile and broken input: a corpus of bad files, generated here, goes through one batch.

Every case must end with a clear one-line message (or a correct protection), the batch must go on to the
next photo, nothing may crash, and no partial file may be left in the output folder. The loader is also
fuzzed with hypothesis for a bounded time.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from facecloak.core import export as export_module
from facecloak.core.batch import BatchSettings, Worker, run_batch
from facecloak.core.export import ExportError, ExportOptions, export_protected
from facecloak.core.image import ImageLoadError, open_photo, pil_to_tensor
from facecloak.core.zoo.manifest import load_manifest
from facecloak.core.zoo.registry import cache_status

pytestmark = pytest.mark.needs_models
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0

# -- corpus builders ----------------------------------------------------------------------------------------


def jpeg_bytes(image: Image.Image, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **params)
    return out.getvalue()


def png_bytes(image: Image.Image, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **params)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_raw(width: int, height: int, bit_depth: int, colour: int, rows: list[bytes] | None = None) -> bytes:
    """A PNG written by hand: headers claiming anything, rows as given (or none)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\0" + r for r in rows)) if rows is not None else zlib.compress(b"\0" * 16)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def huge_real_png(width: int, height: int) -> bytes:
    """A valid grayscale PNG of ``width`` x ``height``, streamed so memory stays small (zeros compress well)."""
    comp = zlib.compressobj(1)
    row = b"\0" * (width + 1)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b"")
    )


def jpeg_with_size(data: bytes, width: int, height: int) -> bytes:
    """Patch the SOF header of a JPEG so it claims other dimensions (a decompression bomb)."""
    i = 2
    while i < len(data):
        marker, length = data[i + 1], struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]
        i += 2 + length
    raise AssertionError("no SOF marker")


def with_orientation(image: Image.Image, orientation: int) -> bytes:
    """The JPEG a camera writes: pixels stored turned, EXIF saying how to turn them back upright."""
    stored = {
        1: image,
        2: image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        3: image.transpose(Image.Transpose.ROTATE_180),
        4: image.transpose(Image.Transpose.FLIP_TOP_BOTTOM),
        5: image.transpose(Image.Transpose.TRANSPOSE),
        6: image.transpose(Image.Transpose.ROTATE_90),
        7: image.transpose(Image.Transpose.TRANSVERSE),
        8: image.transpose(Image.Transpose.ROTATE_270),
    }[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    return jpeg_bytes(stored, quality=92, exif=exif)


def many_faces(astronaut: np.ndarray, count: int = 30) -> Image.Image:
    face = Image.fromarray(astronaut[40:220, 150:290]).resize((70, 90))
    canvas = Image.new("RGB", (6 * 80, 5 * 100), (120, 130, 140))
    for i in range(count):
        canvas.paste(face, ((i % 6) * 80 + 5, (i // 6) * 100 + 5))
    return canvas


ANY_FAILURE = {"error"}
PROTECTED = {"protected"}
HANDLED = {"protected", "no face"}  # either is right; crashing or a partial file is not


def build_corpus(folder: Path, astronaut: np.ndarray) -> dict[str, tuple[list[Path], set[str], str]]:
    """Case name -> (paths given to the batch, acceptable statuses, regex the message must match)."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(astronaut)
    small = photo.resize((256, 256))
    jpeg = jpeg_bytes(photo, quality=90)
    png = png_bytes(small)
    cases: dict[str, tuple[list[Path], set[str], str]] = {}

    def add(name: str, filename: str, data: bytes | None, statuses: set[str], message: str = "") -> Path:
        path = folder / filename
        if data is not None:
            path.write_bytes(data)
        cases[name] = ([path], statuses, message)
        return path

    unreadable = r"not a recognised image format|not a readable image|damaged or truncated"
    add("zero-byte .jpg", "empty.jpg", b"", ANY_FAILURE, r"empty file \(0 bytes\)")
    add("zero-byte .png", "empty.png", b"", ANY_FAILURE, r"empty file")
    add("truncated JPEG (half)", "trunc_half.jpg", jpeg[: len(jpeg) // 2], ANY_FAILURE, unreadable)
    add("truncated JPEG (header only)", "trunc_head.jpg", jpeg[:300], ANY_FAILURE, unreadable)
    add("truncated JPEG (no EOI, 1 byte short)", "trunc_eoi.jpg", jpeg[:-2], HANDLED | ANY_FAILURE, "")
    add("truncated PNG (half)", "trunc_half.png", png[: len(png) // 2], ANY_FAILURE, unreadable)
    add("truncated PNG (signature only)", "trunc_sig.png", png[:8], ANY_FAILURE, unreadable)
    add("PNG with a bad CRC", "bad_crc.png", png[:30] + bytes([png[30] ^ 0xFF]) + png[31:], ANY_FAILURE, unreadable)
    add("random bytes .jpg", "random.jpg", rng.bytes(5000), ANY_FAILURE, unreadable)
    add("random bytes .png", "random.png", rng.bytes(5000), ANY_FAILURE, unreadable)
    add("random bytes .webp", "random.webp", rng.bytes(5000), ANY_FAILURE, unreadable)
    add("random bytes .tif", "random.tif", b"II*\0" + rng.bytes(3000), ANY_FAILURE, unreadable)
    add("random bytes .heic", "random.heic", b"\0\0\0\x18ftypheic" + rng.bytes(3000), ANY_FAILURE, unreadable)
    add("JPEG magic then garbage", "magic.jpg", b"\xff\xd8\xff\xe0" + rng.bytes(2000), ANY_FAILURE, unreadable)
    add("text file named .jpg", "notes.jpg", b"Dear diary,\nthis is not a photo.\n" * 20, ANY_FAILURE, unreadable)
    add("HTML page named .png", "page.png", b"<!doctype html><html><body>404</body></html>", ANY_FAILURE, unreadable)
    add("BMP with a broken header", "broken.bmp", b"BM" + rng.bytes(60), ANY_FAILURE, unreadable)
    tiff = io.BytesIO()
    small.save(tiff, "TIFF")
    add("truncated TIFF", "trunc.tif", tiff.getvalue()[:4000], ANY_FAILURE, unreadable)
    big = r"image claims [0-9,]+ MP, over the 120 MP limit \(possible decompression bomb\)"
    add("decompression bomb PNG (100000x100000 header)", "bomb.png", png_raw(100000, 100000, 8, 2), ANY_FAILURE, big)
    add("decompression bomb JPEG (65000x65000 SOF)", "bomb.jpg", jpeg_with_size(jpeg, 65000, 65000), ANY_FAILURE, big)
    add("20000x20000 PNG", "huge.png", huge_real_png(20000, 20000), ANY_FAILURE, big)
    add("1x1 PNG", "one.png", png_bytes(Image.new("RGB", (1, 1), (9, 9, 9))), ANY_FAILURE, r"too small")
    add("1x1 JPEG", "one.jpg", jpeg_bytes(Image.new("RGB", (1, 1))), ANY_FAILURE, r"too small")
    add("1x5000 sliver", "sliver.png", png_bytes(Image.new("RGB", (1, 5000))), ANY_FAILURE, r"too small")
    frames = [small.rotate(a) for a in (0, 10, 20)]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    # a GIF's copy would be a PNG: named apart from anim.png, whose copy would have the same name (a collision)
    add("animated GIF", "anim_gif.gif", gif.getvalue(), ANY_FAILURE, r"animated image \(3 frames\)")
    apng = io.BytesIO()
    frames[0].save(apng, "PNG", save_all=True, append_images=frames[1:])
    add("animated PNG", "anim.png", apng.getvalue(), ANY_FAILURE, r"animated image")
    awebp = io.BytesIO()
    frames[0].save(awebp, "WEBP", save_all=True, append_images=frames[1:])
    add("animated WebP", "anim.webp", awebp.getvalue(), ANY_FAILURE, r"animated image")
    add("CMYK JPEG", "cmyk.jpg", jpeg_bytes(photo.convert("CMYK")), PROTECTED)
    gray16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype("<u2")
    add("16-bit grayscale PNG", "gray16.png", png_bytes(Image.fromarray(gray16)), PROTECTED)
    rows16 = [np.ascontiguousarray(np.asarray(small)[y].astype(">u2") * 257).tobytes() for y in range(256)]
    add("16-bit RGB PNG", "rgb16.png", png_raw(256, 256, 16, 2, rows16), PROTECTED)
    add(
        "palette PNG with transparency",
        "palette.png",
        png_bytes(photo.convert("P", palette=Image.Palette.ADAPTIVE), transparency=0),
        PROTECTED,
    )
    for orientation in range(1, 9):
        add(
            f"EXIF orientation {orientation}",
            f"orient{orientation}.jpg",
            with_orientation(photo, orientation),
            PROTECTED,
        )
    noise = Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8))
    add("photo with no face", "noface.jpg", jpeg_bytes(noise), {"no face"}, r"no face")
    add("30 small faces", "crowd.png", png_bytes(many_faces(astronaut)), PROTECTED)
    cut = Image.fromarray(np.ascontiguousarray(astronaut[0:320, 215:512]))
    add("face cut by the border", "cut.jpg", jpeg_bytes(cut), HANDLED)
    add("grayscale JPEG", "gray.jpg", jpeg_bytes(photo.convert("L")), PROTECTED)
    damaged_exif = jpeg[:2] + b"\xff\xe1\x00\x20Exif\0\0II*\0" + rng.bytes(20) + jpeg[2:]
    add("JPEG with a damaged EXIF block", "bad_exif.jpg", damaged_exif, PROTECTED)
    add("PNG content named .jpg", "really_png.jpg", png, PROTECTED)
    add("name with a newline", "new\nline.jpg", b"", ANY_FAILURE, r"new\?line\.jpg: empty file")
    add("missing file", "does_not_exist.jpg", None, ANY_FAILURE, r"no such file")
    (folder / "folder.jpg").mkdir()
    add("folder named .jpg", "folder.jpg", None, ANY_FAILURE, r"is a folder")
    os.mkfifo(folder / "fifo.jpg")
    add("FIFO named .jpg (would block a reader)", "fifo.jpg", None, ANY_FAILURE, r"not a regular file")
    loop = folder / "loop"
    loop.mkdir()
    (loop / "again").symlink_to(loop, target_is_directory=True)  # a folder symlink back to itself
    (loop / "self.jpg").symlink_to(loop / "self.jpg")  # a file symlink to itself
    (loop / "ping.jpg").symlink_to(loop / "pong.jpg")
    (loop / "pong.jpg").symlink_to(loop / "ping.jpg")
    cases["symlink loop in a folder"] = (
        [loop / "ping.jpg", loop / "pong.jpg", loop / "self.jpg"],
        ANY_FAILURE,
        r"cannot open \(Too many levels of symbolic links\)",
    )
    add("unreadable file", "secret.jpg", jpeg, ANY_FAILURE, r"permission denied")
    add("good photo after all the bad ones", "zz_good.jpg", jpeg, PROTECTED)
    return cases


@pytest.fixture(scope="module")
def worker():
    status = cache_status(load_manifest()["sface"])
    if not status.ready:
        pytest.skip(f"sface not converted: {status.message}")
    return Worker(BatchSettings(steps=1, ensemble=("sface",)))


@contextlib.contextmanager
def unreadable(path: Path):
    """A file the process may not read: chmod for a normal user; root reads anything, so refuse the open."""
    if not IS_ROOT:
        path.chmod(0)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    import builtins

    real_open = builtins.open

    def guarded(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and Path(file) == path:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(file, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(builtins, "open", guarded)
        yield


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, astronaut, worker):
    folder = tmp_path_factory.mktemp("corpus")
    out = tmp_path_factory.mktemp("corpus_out")
    cases = build_corpus(folder, astronaut)
    from facecloak.core.protect import iter_photos

    # the loop folder goes through the folder walker too: it must terminate and list only the three links
    walked = iter_photos([folder / "loop"])
    assert sorted(p.name for p in walked) == ["ping.jpg", "pong.jpg", "self.jpg"]
    order = [p for paths, _s, _m in cases.values() for p in paths]
    before = file_digests(folder)
    lines: list[str] = []
    with unreadable(folder / "secret.jpg"):
        summary = run_batch(order, out, worker.settings, worker=worker, log=lines.append)
    by_source = {Path(r.source): r for r in summary.results}
    return cases, by_source, out, lines, before


def file_digests(folder: Path) -> dict[Path, str]:
    """sha256 of every regular file under ``folder`` (FIFOs, folders and symlink loops left out)."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_corpus_has_at_least_40_cases(corpus_run):
    cases, *_ = corpus_run
    assert len(cases) >= 40


def test_every_case_got_exactly_one_result_in_order_and_the_batch_went_on(corpus_run):
    cases, by_source, _out, lines, _before = corpus_run
    given = [p for paths, _s, _m in cases.values() for p in paths]
    assert set(by_source) == set(given)
    assert by_source[given[-1]].status == "protected"  # the last photo was still reached and protected
    assert len(lines) == len(given)  # one log line per photo
    assert all("\n" not in line for line in lines)


def _case_ids():
    # the ids must be known at collection time: rebuild the names without touching the disk
    return [
        "zero-byte .jpg",
        "zero-byte .png",
        "truncated JPEG (half)",
        "truncated JPEG (header only)",
        "truncated JPEG (no EOI, 1 byte short)",
        "truncated PNG (half)",
        "truncated PNG (signature only)",
        "PNG with a bad CRC",
        "random bytes .jpg",
        "random bytes .png",
        "random bytes .webp",
        "random bytes .tif",
        "random bytes .heic",
        "JPEG magic then garbage",
        "text file named .jpg",
        "HTML page named .png",
        "BMP with a broken header",
        "truncated TIFF",
        "decompression bomb PNG (100000x100000 header)",
        "decompression bomb JPEG (65000x65000 SOF)",
        "20000x20000 PNG",
        "1x1 PNG",
        "1x1 JPEG",
        "1x5000 sliver",
        "animated GIF",
        "animated PNG",
        "animated WebP",
        "CMYK JPEG",
        "16-bit grayscale PNG",
        "16-bit RGB PNG",
        "palette PNG with transparency",
        *[f"EXIF orientation {o}" for o in range(1, 9)],
        "photo with no face",
        "30 small faces",
        "face cut by the border",
        "grayscale JPEG",
        "JPEG with a damaged EXIF block",
        "PNG content named .jpg",
        "name with a newline",
        "missing file",
        "folder named .jpg",
        "FIFO named .jpg (would block a reader)",
        "symlink loop in a folder",
        "unreadable file",
        "good photo after all the bad ones",
    ]


@pytest.mark.parametrize("case", _case_ids())
def test_case_outcome_and_message(corpus_run, case):
    cases, by_source, _out, _lines, _before = corpus_run
    paths, statuses, pattern = cases[case]
    for path in paths:
        result = by_source[path]
        assert result.status in statuses, f"{case}: {result.status}: {result.message}"
        assert "\n" not in result.message and len(result.message) < 300
        if result.status == "error":
            assert result.message, f"{case}: an error needs a message"
            assert re.search(pattern, result.message), f"{case}: {result.message!r} !~ {pattern!r}"
        if result.status == "protected":
            written = open_photo(Path(result.output))  # the output decodes completely
            assert written.size == open_photo(path).size


def test_originals_are_byte_identical(corpus_run):
    cases, *_rest, before = corpus_run
    folder = next(iter(cases.values()))[0][0].parent
    assert len(before) > 40 and file_digests(folder) == before


def test_no_partial_or_stray_file_is_left(corpus_run):
    _cases, by_source, out, _lines, _before = corpus_run
    expected = {Path(r.output).name for r in by_source.values() if r.status == "protected"}
    present = {p.name for p in out.iterdir() if not p.name.startswith(".facecloak-journal")}
    assert present == expected  # no temp files, no outputs for failed photos


def test_every_orientation_is_upright(corpus_run, astronaut):
    cases, by_source, _out, _lines, _before = corpus_run
    reference = np.asarray(Image.fromarray(astronaut), dtype=np.float32)
    for orientation in range(1, 9):
        (path,), _s, _m = cases[f"EXIF orientation {orientation}"]
        loaded = np.asarray(open_photo(path).rgb, dtype=np.float32)
        assert loaded.shape == reference.shape
        assert np.abs(loaded - reference).mean() < 4, orientation  # only JPEG noise, not a turned photo
        written = Image.open(by_source[path].output)
        assert written.getexif().get(0x0112) in (None, 1)  # pixels are upright: no tag may turn them again


def test_crowd_protects_all_30_faces(corpus_run):
    cases, by_source, _out, _lines, _before = corpus_run
    (path,), _s, _m = cases["30 small faces"]
    assert len(by_source[path].faces) == 30


# -- the output side: unwritable folder, full disk ----------------------------------------------------------


@pytest.fixture(scope="module")
def two_photos(tmp_path_factory, astronaut):
    folder = tmp_path_factory.mktemp("two")
    small = Image.fromarray(astronaut).resize((256, 256))
    small.save(folder / "a.jpg", quality=90)
    small.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b.jpg", quality=90)
    return [folder / "a.jpg", folder / "b.jpg"]


def test_output_folder_without_write_permission(tmp_path, two_photos, worker, monkeypatch):
    out = tmp_path / "locked"
    out.mkdir()
    if IS_ROOT:  # root writes anywhere: refuse the temp file the way the kernel would for a user

        def refuse(*_args, **_kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(export_module.tempfile, "mkstemp", refuse)
    else:
        out.chmod(0o555)
    try:
        lines: list[str] = []
        summary = run_batch(two_photos, out, worker.settings, worker=worker, log=lines.append)
    finally:
        out.chmod(0o755)
    assert [r.status for r in summary.results] == ["error", "error"]  # both tried: the batch went on
    for r in summary.results:
        assert re.search(r"output folder locked is not writable", r.message), r.message
    assert not [p for p in out.iterdir() if p.suffix != ".json"]


def test_full_disk_simulated_by_a_failing_write(tmp_path, two_photos, worker, monkeypatch):
    real = export_module._encode

    def fill_then_fail(image, stream, fmt, params):
        stream.write(b"\xff\xd8" + b"\0" * 4096)  # half an image reached the disk...
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "_encode", fill_then_fail)
    summary = run_batch(two_photos, tmp_path, worker.settings, worker=worker, log=lambda _t: None)
    assert [r.status for r in summary.results] == ["error", "error"]
    assert all(r.message.endswith("disk full, nothing written") for r in summary.results)
    assert [p.name for p in tmp_path.iterdir()] == [".facecloak-journal.json"]  # ...and was removed
    monkeypatch.setattr(export_module, "_encode", real)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the monkeypatched full disk test covers it")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


def test_full_disk_on_a_real_small_tmpfs(tiny_tmpfs, astronaut):
    source = tiny_tmpfs.parent / "big.png"
    Image.fromarray(astronaut).save(source)  # ~500 kB of PNG cannot fit in 48 kB
    photo = open_photo(source)
    with pytest.raises(ExportError, match=r"^big_cloaked\.png: disk full, nothing written$"):
        export_protected(source, pil_to_tensor(photo.rgb), tiny_tmpfs, ExportOptions(), photo=photo)
    assert list(tiny_tmpfs.iterdir()) == []


# -- fuzzing the loader -------------------------------------------------------------------------------------

_SEEDS: list[bytes] = []


def _seeds() -> list[bytes]:
    if not _SEEDS:
        rng = np.random.default_rng(1)
        image = Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
        for fmt, params in [("JPEG", {}), ("PNG", {}), ("WEBP", {}), ("TIFF", {}), ("BMP", {})]:
            out = io.BytesIO()
            image.save(out, fmt, **params)
            _SEEDS.append(out.getvalue())
    return _SEEDS


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_seeds())))
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
    return bytes(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(mutated(), st.binary(max_size=512)))
def test_fuzzed_bytes_load_or_fail_with_one_line(tmp_path, data):
    path = tmp_path / "fuzz.jpg"
    path.write_bytes(data)
    try:
        photo = open_photo(path)
    except ImageLoadError as err:
        message = str(err)
        assert message.startswith("fuzz.jpg: ") and "\n" not in message
        return
    assert photo.rgb.mode == "RGB" and min(photo.rgb.size) >= 8
