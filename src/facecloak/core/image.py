"""Photo loading: files to float RGB tensors ``1,3,H,W`` in [0, 1], orientation applied.

Photos come from phones and cameras in many formats (JPEG, PNG 8/16 bit with palette or alpha, WebP, TIFF,
BMP, HEIC/HEIF, grayscale, CMYK) and some files are broken or hostile. :func:`open_photo` reads any of them
into RGB pixels plus what the exporter needs to write the protected copy back faithfully (alpha, grayscale,
bit depth, ICC profile, EXIF, JPEG quality); every failure is an :class:`ImageLoadError` with a one-line
message that names the file.
"""

from __future__ import annotations

import io
import re
import stat
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageFile, ImageOps

# Refuse decompression bombs early with a clear message (Pillow warns at 89 MP, errors at 179 MP).
MAX_PIXELS = 120_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
# Smaller than this cannot hold a face the detector can find; refusing keeps the attack's maths sane.
MIN_SIDE = 8
# Photos are read whole into memory; a larger file is not a photo we should try.
MAX_FILE_BYTES = 512 * 1024 * 1024
# A broken file must be an error, not a half-grey photo that we then "protect".
ImageFile.LOAD_TRUNCATED_IMAGES = False

try:  # HEIC/HEIF (iPhone photos) is optional: pillow-heif registers an opener and an encoder with Pillow.
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_SUPPORTED = True
except ImportError:  # pragma: no cover - depends on the installation
    HEIF_SUPPORTED = False

# Suffixes picked up when a folder is searched, and the Pillow format each is written back as.
FORMAT_OF_SUFFIX = {
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".png": "PNG",
    ".webp": "WEBP",
    ".bmp": "BMP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".heic": "HEIF",
    ".heif": "HEIF",
}
PHOTO_SUFFIXES = frozenset(s for s, f in FORMAT_OF_SUFFIX.items() if f != "HEIF" or HEIF_SUPPORTED)

# The IJG reference luminance table (natural order) that libjpeg scales by the quality setting.
_IJG_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=np.float64,
).ravel()


class ImageLoadError(ValueError):
    """A file that is not a photo FaceCloak can read; the message says why, in one line."""


def display_name(path: str | Path) -> str:
    """The file name, safe to print on one line (a hostile name may hold newlines or control characters)."""
    name = Path(path).name or str(path)
    return "".join(c if c.isprintable() else "?" for c in name)


def display_path(path: str | Path) -> str:
    """The path as given, safe to print on one line (tells apart photos of one name in different folders)."""
    return "".join(c if c.isprintable() else "?" for c in str(path))


def load_error_message(path: str | Path, err: ImageLoadError) -> str:
    """``err`` (which names the file) as one line naming the path as given instead."""
    message, name = str(err), display_name(path)
    if message.startswith(f"{name}: "):
        message = message[len(name) + 2 :]
    return f"{display_path(path)}: {message}"


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:200]


@dataclass
class SourcePhoto:
    """A decoded photo: oriented RGB pixels and what is needed to write a faithful protected copy."""

    path: Path
    rgb: Image.Image  # mode RGB, EXIF orientation applied
    format: str  # Pillow format name of the content ("JPEG", "PNG", "HEIF", ...)
    alpha: Image.Image | None = None  # mode L, oriented like ``rgb``
    grayscale: bool = False
    bit_depth: int = 8  # per channel of the source
    icc_profile: bytes | None = None  # kept as is, unless the pixels were converted (CMYK)
    exif: Image.Exif = field(default_factory=Image.Exif)  # the source's EXIF (read, never copied wholesale)
    jpeg_quality: int | None = None  # estimated from the quantisation tables
    lossless: bool = True  # WebP: VP8L; other formats: whether the codec is lossless
    tiff_compression: str | None = None

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size


def estimate_jpeg_quality(img: Image.Image) -> int | None:
    """The libjpeg quality (1-100) whose scaled luminance table is closest to the file's, or None."""
    tables = getattr(img, "quantization", None)
    if not tables or 0 not in tables or len(tables[0]) != 64:
        return None
    table = np.asarray(list(tables[0]), dtype=np.float64)
    best, best_err = None, float("inf")
    for q in range(1, 101):
        scale = 5000 / q if q < 50 else 200 - 2 * q
        ref = np.clip(np.floor((_IJG_LUMA * scale + 50) / 100), 1, 255)
        err = float(np.abs(ref - table).mean())
        if err < best_err:
            best, best_err = q, err
    # Tables from other encoders (cameras, phones) are not IJG-scaled; the nearest is still a fair guess.
    return best


def _check_regular_file(path: Path) -> None:
    name = display_name(path)
    try:
        info = path.stat()  # follows symlinks: a loop or a dangling link fails here
    except FileNotFoundError:
        raise ImageLoadError(f"{name}: no such file") from None
    except OSError as err:
        raise ImageLoadError(f"{name}: cannot open ({_one_line(err.strerror or err)})") from err
    if stat.S_ISDIR(info.st_mode):
        raise ImageLoadError(f"{name}: is a folder, not a photo")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or stream forever
        raise ImageLoadError(f"{name}: not a regular file")
    if info.st_size == 0:
        raise ImageLoadError(f"{name}: empty file (0 bytes)")
    if info.st_size > MAX_FILE_BYTES:
        raise ImageLoadError(f"{name}: {info.st_size // 2**20} MB is too large for a photo")


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except PermissionError:
        raise ImageLoadError(f"{display_name(path)}: permission denied (cannot read the file)") from None
    except OSError as err:
        raise ImageLoadError(f"{display_name(path)}: cannot read ({_one_line(err.strerror or err)})") from err


def _to_rgb_and_alpha(img: Image.Image) -> tuple[Image.Image, Image.Image | None, bool, int]:
    """Decoded image of any mode to (RGB, alpha or None, grayscale, bit depth)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode != "I" or array.max() > 255 else 255.0
        gray = Image.fromarray(np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8))
        return gray.convert("RGB"), None, True, 16 if top > 255 else 8
    if mode == "F":
        array = np.asarray(img, dtype=np.float64)
        top = 1.0 if array.max() <= 1.0 else 255.0
        gray = Image.fromarray(np.clip(np.round(array * (255.0 / top)), 0, 255).astype(np.uint8))
        return gray.convert("RGB"), None, True, 32
    if mode == "1":
        return img.convert("L").convert("RGB"), None, True, 1
    if mode == "L":
        return img.convert("RGB"), None, True, 8
    if mode in ("LA", "La"):
        la = img.convert("LA")
        return la.convert("L").convert("RGB"), la.getchannel("A"), True, 8
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        palette_mode = img.palette.mode if img.palette is not None else "RGB"
        gray = palette_mode in ("L", "LA")
        if has_alpha:
            rgba = img.convert("RGBA")
            return rgba.convert("RGB"), rgba.getchannel("A"), gray, 8
        return img.convert("RGB"), None, gray, 8
    if mode in ("RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        return rgba.convert("RGB"), rgba.getchannel("A"), False, 8
    if mode == "CMYK":
        icc = img.info.get("icc_profile")
        if icc:  # a CMYK profile gives the right colours; the naive formula is only a fallback
            try:
                src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
                rgb = ImageCms.profileToProfile(img, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
                if rgb is not None:
                    return rgb, None, False, 8
            except (ImageCms.PyCMSError, OSError, ValueError):
                pass
        return img.convert("RGB"), None, False, 8
    if mode in ("RGB", "YCbCr", "LAB", "HSV", "RGBX"):
        return img.convert("RGB"), None, False, 8
    raise ImageLoadError(f"unsupported pixel mode {mode}")


def open_photo(path: str | Path) -> SourcePhoto:
    """Decode a photo file fully (orientation baked in), refusing broken, hostile and unsupported files."""
    with warnings.catch_warnings():
        # Pillow warns about damaged EXIF and big images; we turn what matters into ImageLoadError ourselves.
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return _open_photo(Path(path))


def _open_photo(path: Path) -> SourcePhoto:
    path = Path(path)
    name = display_name(path)
    _check_regular_file(path)
    data = _read_bytes(path)
    try:
        with warnings.catch_warnings():
            # Between MAX_PIXELS and 2x, Pillow only warns; our own size check below turns it into an error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            width, height = img.size
            if width * height > MAX_PIXELS:
                raise ImageLoadError(
                    f"{name}: {width}x{height} pixels is larger than the {MAX_PIXELS // 1_000_000} MP we process"
                )
            if min(width, height) < MIN_SIDE:
                raise ImageLoadError(f"{name}: {width}x{height} pixels is too small to hold a face")
            fmt = img.format or "unknown"
            # an animation is refused; of an MPO (phone JPEG with a depth map), a multi-page TIFF or a HEIF burst,
            # the primary image is the photo
            frames = getattr(img, "n_frames", 1)
            if getattr(img, "is_animated", False) and fmt in ("GIF", "PNG", "WEBP"):
                raise ImageLoadError(f"{name}: animated image ({frames} frames) is not supported")
            if fmt == "GIF":
                raise ImageLoadError(f"{name}: GIF is not a supported photo format")
            try:  # a damaged EXIF block must not cost the photo: only its metadata is lost
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # Pillow's "Corrupt EXIF data" chatter
                    exif = img.getexif()
            except Exception:
                exif = Image.Exif()
            icc = img.info.get("icc_profile") or None
            quality = estimate_jpeg_quality(img) if fmt in ("JPEG", "MPO") else None
            lossless = fmt not in ("JPEG", "MPO", "HEIF", "WEBP") or (fmt == "WEBP" and b"VP8L" in data[:4096])
            compression = img.info.get("compression") if fmt == "TIFF" else None
            img.load()
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    oriented = ImageOps.exif_transpose(img)
            except (ValueError, KeyError, TypeError, SyntaxError, struct.error):
                oriented = img  # an unreadable orientation tag: the pixels as stored
            rgb, alpha, gray, depth = _to_rgb_and_alpha(oriented)
            rgb.load()
            if oriented.mode == "CMYK":
                icc = None  # a CMYK profile no longer describes the converted pixels
    except ImageLoadError as err:
        message = str(err)
        raise ImageLoadError(message if message.startswith(name) else f"{name}: {message}") from None
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        claimed = f"{int(found.group(1)) / 1e6:,.0f} MP" if found else "too many pixels"
        raise ImageLoadError(
            f"{name}: image claims {claimed}, over the {MAX_PIXELS // 1_000_000} MP limit (possible decompression bomb)"
        ) from None
    except MemoryError:
        raise ImageLoadError(f"{name}: not enough memory to decode this image") from None
    except Image.UnidentifiedImageError:
        raise ImageLoadError(f"{name}: not a recognised image format (or the file is damaged)") from None
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError, ZeroDivisionError) as err:
        # Pillow's decoders raise a zoo of exception types on damaged data; all mean the same to the user.
        text = _one_line(err) or type(err).__name__
        if "truncated" in text.lower() or isinstance(err, EOFError):
            raise ImageLoadError(f"{name}: damaged or truncated {fmt_name(data)} file ({text})") from err
        raise ImageLoadError(f"{name}: not a readable image ({text})") from err
    if fmt == "MPO":
        fmt = "JPEG"
    return SourcePhoto(
        path=path,
        rgb=rgb,
        format=fmt,
        alpha=alpha,
        grayscale=gray,
        bit_depth=depth,
        icc_profile=icc,
        exif=exif,
        jpeg_quality=quality,
        lossless=lossless,
        tiff_compression=compression,
    )


def fmt_name(data: bytes) -> str:
    """A short name of the file type from its first bytes (for messages)."""
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    if data.startswith(b"\x89PNG"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[:2] in (b"II", b"MM"):
        return "TIFF"
    if data[:2] == b"BM":
        return "BMP"
    if data[4:8] == b"ftyp":
        return "HEIF"
    return "image"


def load_pil(path: str | Path) -> Image.Image:
    """Open a photo as an RGB PIL image with its EXIF orientation baked into the pixels."""
    return open_photo(path).rgb


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image to a ``1,3,H,W`` float32 tensor in [0, 1]."""
    array = np.array(img.convert("RGB"), dtype=np.uint8)  # a writable copy: torch shares its memory
    return uint8_to_tensor(array)


def uint8_to_tensor(array: np.ndarray) -> torch.Tensor:
    """``H,W,3`` uint8 RGB array to a ``1,3,H,W`` float32 tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def tensor_to_uint8(image: torch.Tensor) -> np.ndarray:
    """``1,3,H,W`` (or ``3,H,W``) tensor in [0, 1] to an ``H,W,3`` uint8 array, rounded."""
    if image.dim() == 4:
        if image.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {image.shape[0]}")
        image = image[0]
    image = image.detach()
    out = torch.empty((*image.shape[1:], image.shape[0]), dtype=torch.uint8)
    # a strip of rows at a time: whole, the float temporaries are 4x the photo (600 MB each at 48 MP)
    for start in range(0, image.shape[1], 256):
        rows = image[:, start : start + 256].clamp(0, 1).mul_(255).round_()
        out[start : start + 256] = rows.to(device="cpu", dtype=torch.uint8).permute(1, 2, 0)
    return out.numpy()


def load_image(path: str | Path) -> torch.Tensor:
    """Load a photo file as a ``1,3,H,W`` float32 RGB tensor in [0, 1] (EXIF orientation applied)."""
    return pil_to_tensor(load_pil(path))
