"""Write protected photos: same format as the source, faithful pixels, identifying metadata stripped, atomically.

The protected pixels come from the attack as an RGB tensor. This module puts back what the source had that
the attack does not see (alpha, grayscale, bit depth, ICC colour profile), encodes in the source's format at
the source's estimated JPEG quality, and writes only the metadata we choose: by default none that could
identify a person or a device (GPS, serial numbers, owner names, XMP face regions, thumbnails, MakerNotes are
never copied because nothing is copied wholesale); ``keep_metadata`` keeps the capture date and camera model.
Every copy carries a marker naming FaceCloak and its version (an XMP packet; see :func:`facecloak_marker`), so a
later run, ``facecloak report`` and the app recognise a protected copy and never protect it a second time.
Files appear atomically (temp file + rename in the output folder) and never replace the source photo.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, PngImagePlugin

from .. import __version__
from .files import UMASK
from .image import FORMAT_OF_SUFFIX, HEIF_SUPPORTED, SourcePhoto, display_name, fmt_name, open_photo, tensor_to_uint8

DEFAULT_JPEG_QUALITY = 92
# Re-encoding at a very low source quality would wash the cloak out; below this we spend a few more bytes.
MIN_ESTIMATED_QUALITY = 75
# Above this libjpeg's files balloon for no visible gain (Pillow's own advice).
MAX_ESTIMATED_QUALITY = 95
HEIF_QUALITY = 90

# EXIF kept by ``keep_metadata``: capture date (with its time zone) and the camera's make and model.
_KEEP_IFD0 = (0x010F, 0x0110, 0x0132)  # Make, Model, DateTime
_EXIF_IFD = 0x8769
_KEEP_EXIF_IFD = (0x9003, 0x9004, 0x9010, 0x9011)  # DateTimeOriginal, DateTimeDigitized, OffsetTime(Original)

_SUFFIX_OF_FORMAT = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif", "BMP": ".bmp", "HEIF": ".heic"}
TEMP_MARK = ".facecloak-"  # in every temp file name, so a batch can clean up after a killed run
MAX_NUMBERED = 999  # "keep both": x_cloaked.jpg, then x_cloaked (2).jpg … x_cloaked (999).jpg

# The marker of a protected copy: the standard XMP "creator tool" field, naming the program and its version and
# nothing about the person or the camera. BMP has no metadata field: there the same packet follows the pixel data,
# where every reader stops (the header says where the pixels end).
MARKER_TOOL = f"FaceCloak {__version__}"
MARKER_XMP = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    f'<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:CreatorTool="{MARKER_TOOL}"/>'
    '</rdf:RDF></x:xmpmeta><?xpacket end="r"?>'
).encode()
# attribute or element form (an XMP editor may rewrite one as the other)
_MARKER_PATTERN = re.compile(rb'xmp:CreatorTool(?:="|>)(FaceCloak [0-9][^"<]{0,40})')
_BMP_MARKER_TAIL = 4096  # bytes read from the end of a BMP to find the marker


class ExportError(RuntimeError):
    """The protected copy could not be written; the message says why, in one line. No partial file is left."""


@dataclass(frozen=True)
class ExportOptions:
    suffix: str = "_cloaked"
    format: str = "same"  # "same" | "jpeg" | "png"
    jpeg_quality: int | None = None  # None: the source's estimated quality (JPEG sources), else 92
    keep_metadata: bool = False  # keep the capture date and camera model only
    overwrite: bool = False
    same_name: bool = False  # same file name as the source (for another folder)

    def __post_init__(self) -> None:
        if self.format not in ("same", "jpeg", "png"):
            raise ValueError(f"format must be same, jpeg or png, not {self.format!r}")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError("JPEG quality must be between 1 and 100")
        if "/" in self.suffix or os.sep in self.suffix or "\0" in self.suffix:
            raise ValueError("the suffix may not contain a path separator")
        if not self.suffix and not self.same_name:
            raise ValueError("an empty suffix needs same_name (and another output folder)")


def facecloak_marker(path: Path) -> str | None:
    """The marker's "FaceCloak <version>" when ``path`` is a copy FaceCloak wrote, else None.

    Reads the file's metadata only (never its pixels) and never raises: a file that cannot be read or parsed
    carries no marker, and whoever loads it for real reports the problem.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:  # a FIFO would block the read
            return None
        with open(path, "rb") as stream:
            if stream.read(2) == b"BM":
                stream.seek(max(0, info.st_size - _BMP_MARKER_TAIL))
                return _marker_in(stream.read())
            stream.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(stream) as img:  # parses the headers; pixels are decoded only by load()
                    return _marker_in(img.info.get("xmp"))
    except Exception:  # damaged, hostile or unreadable: Pillow raises many types; none of them means "marked"
        return None


def is_facecloak_output(path: Path) -> bool:
    """Whether ``path`` is a protected copy written by FaceCloak (it carries the marker)."""
    return facecloak_marker(path) is not None


def _marker_in(xmp: bytes | str | None) -> str | None:
    if not xmp:
        return None
    found = _MARKER_PATTERN.search(xmp.encode() if isinstance(xmp, str) else xmp)
    return found.group(1).decode("utf-8", "replace") if found else None


def _writable(fmt: str) -> bool:
    return fmt != "HEIF" or HEIF_SUPPORTED


def _source_format(source: Path) -> str:
    """The format a source is written back as with ``format="same"``: by its suffix, else by its first bytes."""
    fmt = FORMAT_OF_SUFFIX.get(source.suffix.lower())
    if fmt is None:
        try:
            with open(source, "rb") as stream:
                head = stream.read(16)
        except OSError:
            head = b""
        fmt = {"JPEG": "JPEG", "PNG": "PNG", "WebP": "WEBP", "TIFF": "TIFF", "BMP": "BMP", "HEIF": "HEIF"}.get(
            fmt_name(head), "PNG"
        )
    return fmt if _writable(fmt) else "JPEG"


def output_format(source: Path, options: ExportOptions) -> str:
    """Pillow format name the protected copy of ``source`` is written in."""
    if options.format == "jpeg":
        return "JPEG"
    if options.format == "png":
        return "PNG"
    return _source_format(Path(source))


def export_target(source: Path, out_dir: Path, options: ExportOptions, relative_to: Path | None = None) -> Path:
    """Where the protected copy of ``source`` goes (the source's own suffix when the format is unchanged).

    ``relative_to`` is the folder ``source`` was found under: its subfolders are mirrored under ``out_dir``
    (``F/a/x.jpg`` -> ``OUT/a/x_cloaked.jpg``), so photos of the same name in two subfolders never share a copy.
    ValueError when ``source`` does not lie under ``relative_to``.
    """
    source = Path(source)
    fmt = output_format(source, options)
    own = source.suffix.lower()
    ext = own if FORMAT_OF_SUFFIX.get(own) == fmt else _SUFFIX_OF_FORMAT[fmt]
    stem = source.stem if options.same_name else f"{source.stem}{options.suffix}"
    folder = Path(out_dir)
    if relative_to is not None:
        folder = folder / _mirrored(source, Path(relative_to))
    return folder / f"{stem}{ext}"


def _mirrored(source: Path, root: Path) -> Path:
    """The subfolder of ``source`` below ``root`` (lexically, as a folder walk names it)."""
    try:
        relative = source.parent.relative_to(root)
    except ValueError:
        raise ValueError(f"{display_name(source)} is not inside {display_name(root)}") from None
    if ".." in relative.parts:
        raise ValueError(f"{display_name(source)} is not inside {display_name(root)}")
    return relative


def same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file (through symlinks, ``..`` and hard links alike); never raises."""
    try:
        return os.path.realpath(a) == os.path.realpath(b) or (Path(b).exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_not_original(source: Path, target: Path) -> None:
    """Refuse a ``target`` that is ``source`` itself: the original is never replaced.

    Raises:
        ExportError: ``target`` names the source photo.
    """
    if same_file(source, target):
        raise ExportError(f"{display_name(target)}: would replace the original; choose another folder or suffix")


def filtered_exif(exif: Image.Exif, keep: bool, fmt: str) -> Image.Exif | None:
    """A new EXIF block holding only what we allow: nothing by default, date and camera model when ``keep``."""
    if not keep:
        return None
    out = Image.Exif()
    for tag in _KEEP_IFD0:
        if tag in exif:
            out[tag] = exif[tag]
    try:
        sub = exif.get_ifd(_EXIF_IFD)
    except Exception:  # a damaged sub-IFD: keep what IFD0 gave
        sub = {}
    kept = {tag: sub[tag] for tag in _KEEP_EXIF_IFD if tag in sub}
    if kept:
        if fmt == "TIFF":  # Pillow's TIFF writer drops the EXIF sub-IFD: put the date where TIFF keeps it
            out[0x0132] = kept.get(0x9003, kept.get(0x9004, out.get(0x0132)))
        else:
            out.get_ifd(_EXIF_IFD).update(kept)
    return out if len(out) else None


def _compose(photo: SourcePhoto, pixels: np.ndarray, fmt: str) -> Image.Image:
    """Protected RGB pixels back to the source's kind of image for ``fmt`` (alpha, grayscale, 16 bit)."""
    rgb = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    alpha = photo.alpha
    if alpha is not None and fmt == "JPEG":  # JPEG has no alpha: flatten on white, as a viewer would show it
        white = Image.new("RGB", rgb.size, (255, 255, 255))
        rgb = Image.composite(rgb, white, alpha)
        alpha = None
    if photo.grayscale and fmt in ("JPEG", "PNG", "TIFF", "BMP"):
        gray = rgb.convert("L")
        if alpha is not None:
            return Image.merge("LA", (gray, alpha))
        if photo.bit_depth == 16 and fmt in ("PNG", "TIFF"):
            # keep the file 16-bit; the protected values are 8-bit steps scaled to the full 16-bit range
            wide = np.asarray(gray, dtype=np.uint16) * 257
            return Image.fromarray(wide.astype("<u2"))
        return gray
    if alpha is not None:
        return Image.merge("RGBA", (*rgb.split(), alpha))
    return rgb


def _marker_params(fmt: str) -> dict:
    """Save parameters that write the FaceCloak marker (BMP: see :func:`_encode`)."""
    if fmt in ("JPEG", "WEBP", "HEIF"):
        return {"xmp": MARKER_XMP}
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", MARKER_XMP.decode(), zip=False)  # where XMP lives in a PNG
        return {"pnginfo": info}
    return {}  # TIFF: with the EXIF tags in _save_params


def _save_params(photo: SourcePhoto, fmt: str, options: ExportOptions) -> dict:
    params: dict = _marker_params(fmt)
    if photo.icc_profile and fmt != "BMP":
        params["icc_profile"] = photo.icc_profile
    exif = filtered_exif(photo.exif, options.keep_metadata, fmt)
    if fmt == "TIFF":  # Pillow's TIFF writer takes tiffinfo over exif: the marker (tag 700, XMP) joins the tags
        tags = exif if exif is not None else Image.Exif()
        tags[700] = MARKER_XMP
        params["tiffinfo"] = tags
    elif exif is not None and fmt != "BMP":
        params["exif"] = exif.tobytes()
    if fmt == "JPEG":
        if options.jpeg_quality is not None:
            quality = options.jpeg_quality
        elif photo.jpeg_quality is not None:
            quality = min(MAX_ESTIMATED_QUALITY, max(MIN_ESTIMATED_QUALITY, photo.jpeg_quality))
        else:
            quality = DEFAULT_JPEG_QUALITY
        # 4:4:4: chroma subsampling would halve the cloak's colour component in each direction
        params.update(quality=quality, subsampling=0, optimize=True)
    elif fmt == "WEBP":
        if photo.lossless and photo.format == "WEBP" and options.jpeg_quality is None:
            params.update(lossless=True, quality=80, method=4)
        else:
            params.update(quality=options.jpeg_quality or DEFAULT_JPEG_QUALITY, method=4)
    elif fmt == "PNG":
        params["optimize"] = False  # compress_level 6 default; optimize is slow on big photos
    elif fmt == "TIFF":
        lossless = {"raw", "tiff_lzw", "tiff_deflate", "tiff_adobe_deflate", "packbits"}
        params["compression"] = photo.tiff_compression if photo.tiff_compression in lossless else "tiff_adobe_deflate"
    elif fmt == "HEIF":
        params["quality"] = options.jpeg_quality or HEIF_QUALITY
    return params


def _encode(image: Image.Image, stream: BinaryIO, fmt: str, params: dict) -> None:
    """Encode into an open file (a separate function so tests can simulate a full disk here)."""
    image.save(stream, format=fmt, **params)
    if fmt == "BMP":  # no metadata field: the marker follows the pixel data
        stream.write(MARKER_XMP)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every file system lets a folder be opened or synced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_error(target: Path, err: OSError) -> ExportError:
    name = display_name(target)
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return ExportError(f"{name}: disk full, nothing written")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ExportError(f"{name}: output folder {display_name(target.parent)} is not writable")
    return ExportError(f"{name}: cannot write ({' '.join(str(err.strerror or err).split())})")


def write_atomic(image: Image.Image, target: Path, fmt: str, params: dict, overwrite: bool = False) -> None:
    """Encode to a temp file beside ``target``, sync, then rename: readers see the whole file or none."""
    target = Path(target)
    if not overwrite and target.exists():
        raise FileExistsError(f"{display_name(target)} exists (not overwritten)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp_name = tempfile.mkstemp(prefix=f".{target.name}{TEMP_MARK}", suffix=".part", dir=target.parent)
    except OSError as err:
        raise _write_error(target, err) from None
    tmp = Path(tmp_name)
    try:
        with contextlib.suppress(OSError):
            os.fchmod(handle, 0o666 & ~UMASK)
        with os.fdopen(handle, "wb") as stream:
            _encode(image, stream, fmt, params)
            stream.flush()
            os.fsync(stream.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:  # a hard link fails if the target appeared meanwhile: never clobber another writer's file
                os.link(tmp, target)
            except FileExistsError:
                raise FileExistsError(f"{display_name(target)} exists (not overwritten)") from None
            except OSError:  # file systems without hard links
                os.replace(tmp, target)
        _fsync_dir(target.parent)
    except FileExistsError:
        raise
    except OSError as err:
        raise _write_error(target, err) from None
    except (ValueError, TypeError, KeyError) as err:  # the encoder refused these pixels or parameters
        raise ExportError(f"{display_name(target)}: cannot encode as {fmt} ({' '.join(str(err).split())})") from None
    finally:
        tmp.unlink(missing_ok=True)


def export_protected(
    source: Path,
    protected: torch.Tensor,
    out_dir: Path,
    options: ExportOptions = ExportOptions(),  # frozen, so a shared default is safe
    photo: SourcePhoto | None = None,
) -> Path:
    """Write ``protected`` (``1,3,H,W`` in [0, 1], the oriented source's size) as the copy of ``source`` in
    ``out_dir``, named by :func:`export_target`.

    ``photo`` is the decoded source when the caller has it (saves decoding it again). Returns the written path.
    """
    source = Path(source)
    target = export_target(source, out_dir, options)
    check_not_original(source, target)
    return write_protected(photo or open_photo(source), protected, target, options)


def write_protected(
    photo: SourcePhoto, protected: torch.Tensor, target: Path, options: ExportOptions, numbered: bool = False
) -> Path:
    """Write ``protected`` (``1,3,H,W`` in [0, 1], ``photo``'s size) as the protected copy of ``photo`` at ``target``.

    Args:
        photo: the decoded source photo (its format, alpha, profile and metadata shape the copy).
        protected: the protected pixels.
        target: where the copy goes (:func:`export_target`); never the source itself.
        options: format, quality, metadata, and whether an existing file at ``target`` is replaced.
        numbered: "keep both": when ``target`` is taken, write the first free ``<stem> (2)<ext>``, ``(3)``…
            beside it instead, never replacing a file (the no-clobber write itself claims each name).

    Returns:
        The path written.

    Raises:
        ExportError: the copy would replace the source, cannot be encoded or written, or no numbered name is free.
        FileExistsError: ``target`` exists and neither ``options.overwrite`` nor ``numbered`` allows another file.
    """
    target = Path(target)
    fmt = output_format(photo.path, options)
    image = _protected_image(photo, protected, fmt)
    params = _save_params(photo, fmt, options)
    if not numbered:
        check_not_original(photo.path, target)
        write_atomic(image, target, fmt, params, overwrite=options.overwrite)
        return target
    for number in range(1, MAX_NUMBERED + 1):
        candidate = target if number == 1 else target.with_name(f"{target.stem} ({number}){target.suffix}")
        if same_file(photo.path, candidate):
            continue
        try:
            write_atomic(image, candidate, fmt, params, overwrite=False)
        except FileExistsError:
            continue
        return candidate
    folder = display_name(target.parent)
    raise ExportError(f"{display_name(photo.path)}: no free name for its protected copy in {folder}")


def _protected_image(photo: SourcePhoto, protected: torch.Tensor, fmt: str) -> Image.Image:
    """The protected pixels as the image to encode; ExportError when they are not the photo's size."""
    pixels = tensor_to_uint8(protected.detach().cpu())
    height, width = pixels.shape[:2]
    if (width, height) != photo.size:
        raise ExportError(
            f"{display_name(photo.path)}: protected image is {width}x{height}, "
            f"the photo {photo.size[0]}x{photo.size[1]}"
        )
    return _compose(photo, pixels, fmt)  # holds its own copy: at 48 MP the array is 150 MB less once it goes


def remove_stale_temp_files(out_dir: Path) -> int:
    """Delete temp files a killed run left in ``out_dir`` (only ours, recognised by their name; not in subfolders)."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in Path(out_dir).iterdir():
            if entry.name.startswith(".") and TEMP_MARK in entry.name and entry.name.endswith(".part"):
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed += 1
    return removed
