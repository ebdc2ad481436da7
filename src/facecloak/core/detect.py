"""Face detection with facenet-pytorch's MTCNN (weights ship in its wheel)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .device import select_device


@dataclass(frozen=True)
class Face:
    """One detected face in photo pixel coordinates (x right, y down, origin top-left corner).

    ``landmarks`` are MTCNN's five points: left eye, right eye, nose, left and right mouth corner
    (left/right as seen in the picture).
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: tuple[tuple[float, float], ...]

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]

    def landmark_array(self) -> np.ndarray:
        return np.asarray(self.landmarks, dtype=np.float64)

    def to_dict(self) -> dict:
        return {"box": list(self.box), "score": self.score, "landmarks": [list(p) for p in self.landmarks]}

    @classmethod
    def from_dict(cls, data: dict) -> Face:
        return cls(
            box=tuple(float(v) for v in data["box"]),
            score=float(data["score"]),
            landmarks=tuple((float(x), float(y)) for x, y in data["landmarks"]),
        )


@dataclass(frozen=True)
class DetectorConfig:
    """``detect_max_side``: photos are downscaled to this long side for detection, then mapped back.

    ``min_face_size`` is in pixels of the *original* photo; ``min_score`` drops weak detections.
    """

    detect_max_side: int = 1280
    min_face_size: int = 40
    min_score: float = 0.92
    device: str = "cpu"


class FaceDetector:
    """Finds every face in a photo: box, score and five landmarks."""

    def __init__(self, config: DetectorConfig | None = None) -> None:
        from facenet_pytorch import MTCNN

        self.config = config or DetectorConfig()
        self.device = select_device(self.config.device)
        # min_face_size is set per call (it depends on the downscale factor).
        self._mtcnn = MTCNN(keep_all=True, device=self.device, post_process=False)

    def detect(self, photo: torch.Tensor) -> list[Face]:
        """Faces in a ``1,3,H,W`` photo tensor in [0, 1], largest first. Empty list when none."""
        if photo.dim() != 4 or photo.shape[0] != 1 or photo.shape[1] != 3:
            raise ValueError(f"expected a 1,3,H,W photo, got {tuple(photo.shape)}")
        height, width = photo.shape[-2:]
        scale = min(1.0, self.config.detect_max_side / max(height, width))
        small = photo
        if scale < 1.0:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            small = torch.nn.functional.interpolate(photo, size=size, mode="bilinear", antialias=True)
        pixels = small[0].detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
        self._mtcnn.min_face_size = max(12, int(self.config.min_face_size * scale))
        with torch.no_grad():
            boxes, scores, points = self._mtcnn.detect(pixels, landmarks=True)
        if boxes is None:
            return []
        # Map back from the detection copy's pixel grid to the photo's (pixel centres align).
        sy = height / small.shape[-2]
        sx = width / small.shape[-1]
        faces = []
        for box, score, pts in zip(boxes, scores, points, strict=True):
            if score < self.config.min_score:
                continue
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
            if min(box[2] - box[0], box[3] - box[1]) < self.config.min_face_size:
                continue
            faces.append(
                Face(
                    box=tuple(float(v) for v in box),
                    score=float(score),
                    landmarks=tuple((float(x * sx), float(y * sy)) for x, y in pts),
                )
            )
        faces.sort(key=lambda f: f.width * f.height, reverse=True)
        return faces
