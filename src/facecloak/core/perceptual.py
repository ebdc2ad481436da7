"""LPIPS (AlexNet) as an extra, optional perceptual measure.

The ``lpips`` package ships only its linear heads; the AlexNet ImageNet backbone comes from
torchvision's download URL, which no registry package carries. So LPIPS is measured only when that
checkpoint is already in the torch cache (``facecloak models --fetch-lpips`` puts it there on a
machine with internet, checking torchvision's hash); otherwise reports say it was not measured.
Loading never opens a connection: the backbone is built empty and filled from the cached file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
ALEXNET_HASH_PREFIX = "7be5be79"  # torchvision's: the first hex digits of the file's sha256
NOT_MEASURED = "LPIPS not measured (AlexNet backbone not in the torch cache: run 'facecloak models --fetch-lpips')"


def alexnet_checkpoint() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_URL.rsplit("/", 1)[1]


def lpips_available() -> bool:
    return alexnet_checkpoint().is_file()


def fetch_alexnet(download: Callable[..., None] | None = None) -> Path:
    """Download the AlexNet backbone into the torch cache (hash checked); a no-op when it is there."""
    path = alexnet_checkpoint()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    download = download or torch.hub.download_url_to_file
    # download_url_to_file writes to a temporary file and renames it only once the hash matched
    download(ALEXNET_URL, str(path), hash_prefix=ALEXNET_HASH_PREFIX, progress=False)
    return path


class LPIPSMeasure:
    """``LPIPSMeasure()(a, b)``: LPIPS (alex, v0.1) of ``B,3,H,W`` images in [0, 1]; lower is more alike."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        import warnings

        import lpips

        if not lpips_available():
            raise FileNotFoundError(NOT_MEASURED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's deprecation notice for pretrained=False
            model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        features = torch.load(alexnet_checkpoint(), map_location="cpu", weights_only=True)
        with torch.no_grad():
            # lpips keeps torchvision's layer indices inside its slices ("slice2.3.weight" is features.3.weight)
            for name, tensor in model.net.state_dict().items():
                tensor.copy_(features[f"features.{name.split('.', 1)[1]}"])
        self.model = model.eval().requires_grad_(False).to(device)
        self.device = torch.device(device)

    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Differentiable LPIPS per image (``B``), on the inputs' device: the attack's perceptual term."""
        return self.model(a, b, normalize=True).flatten()

    @torch.no_grad()
    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.distance(a.to(self.device), b.to(self.device)).cpu()


def lpips_or_none(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """LPIPS of two ``1,3,H,W`` images when the backbone is available, else None."""
    if not lpips_available():
        return None
    return float(LPIPSMeasure()(a, b)[0])
