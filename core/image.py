"""Photo loading: files to float RGB tensors ``1,3,H,W`` in [0, 1], orientation applied."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

# Refuse decompression bombs early with a clear message (Pillow warns at 89 MP, errors at 179 MP).
MAX_PIXELS = 120_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class ImageLoadError(ValueError):
    """A file that is not a photo FaceCloak can read; the message says why, in one line."""


def load_pil(path: str | Path) -> Image.Image:
    """Open a photo as an RGB PIL image with its EXIF orientation baked into the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageLoadError(f"{path.name}: {img.width}x{img.height} is larger than we process")
            img = ImageOps.exif_transpose(img)
            return img.convert("RGB")
    except ImageLoadError:
        raise
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as err:
        raise ImageLoadError(f"{path.name}: not a readable image ({err})") from err


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
    array = image.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
    return array.cpu().numpy()


def load_image(path: str | Path) -> torch.Tensor:
    """Load a photo file as a ``1,3,H,W`` float32 RGB tensor in [0, 1] (EXIF orientation applied)."""
    return pil_to_tensor(load_pil(path))
