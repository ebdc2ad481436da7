"""Face detection and differentiable alignment on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facecloak.core.align import ARCFACE_112, BoxAlignment, FaceAligner, TemplateAlignment, umeyama
from facecloak.core.detect import DetectorConfig, FaceDetector


def test_detects_the_astronaut_with_landmarks_in_order(astronaut_faces, astronaut_photo):
    assert len(astronaut_faces) == 1
    face = astronaut_faces[0]
    assert face.score > 0.99
    x0, y0, x1, y1 = face.box
    # The face of skimage's astronaut (Eileen Collins) is around x 180-270, y 60-175 of the 512x512 photo.
    assert 150 < x0 < 210 and 240 < x1 < 300 and 30 < y0 < 90 and 150 < y1 < 200
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = face.landmarks
    assert lex < nx < rex  # left eye, nose, right eye from left to right
    assert max(ley, rey) < ny < min(lmy, rmy)  # eyes above nose above mouth
    assert lmx < rmx
    for x, y in face.landmarks:
        assert x0 <= x <= x1 and y0 <= y <= y1


def test_no_face_is_an_empty_list(detector):
    rng = np.random.default_rng(0)
    sky = torch.from_numpy(rng.uniform(0.4, 0.6, (1, 3, 300, 400)).astype(np.float32))
    assert detector.detect(sky) == []


def test_large_photo_is_detected_on_a_downscaled_copy_and_mapped_back(astronaut_photo, astronaut_faces):
    big = F.interpolate(astronaut_photo, scale_factor=6, mode="bilinear", align_corners=False)  # 3072 px
    detector = FaceDetector(DetectorConfig(detect_max_side=640))
    faces = detector.detect(big)
    assert len(faces) == 1
    small_box = np.array(astronaut_faces[0].box) * 6
    assert np.abs(np.array(faces[0].box) - small_box).max() < 0.06 * faces[0].width
    small_marks = astronaut_faces[0].landmark_array() * 6
    assert np.abs(faces[0].landmark_array() - small_marks).max() < 0.05 * faces[0].width


def test_min_face_size_is_in_photo_pixels(astronaut_photo):
    assert FaceDetector(DetectorConfig(min_face_size=200)).detect(astronaut_photo) == []


def test_umeyama_recovers_a_similarity_transform():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -4.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rot).T + shift
    matrix = umeyama(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_template_alignment_puts_landmarks_on_the_template(astronaut_photo, astronaut_faces):
    alignment = TemplateAlignment((112, 112), ARCFACE_112)
    matrix = alignment.matrix(astronaut_faces[0].landmark_array())
    mapped = np.c_[astronaut_faces[0].landmark_array(), np.ones(5)] @ matrix.T
    # five points, four degrees of freedom: a real face fits the template to within a few pixels
    assert np.abs(mapped - np.array(ARCFACE_112)).max() < 6


def test_box_alignment_covers_the_box_plus_margin():
    alignment = BoxAlignment((160, 160), margin=32)
    from facecloak.core.detect import Face

    face = Face(box=(100.0, 200.0, 228.0, 328.0), score=1.0, landmarks=((0.0, 0.0),) * 5)
    m = alignment.matrix(None, np.array(face.box))
    # the box (128 px) plus margin fills 160 px: the box itself maps to 16..144 (corner coordinates)
    corners = np.array([[100 - 0.5, 200 - 0.5, 1], [228 - 0.5, 328 - 0.5, 1]]) @ m.T + 0.5
    np.testing.assert_allclose(corners, [[16, 16], [144, 144]], atol=1e-6)


@pytest.mark.parametrize("scale", [1, 6])
def test_gradient_reaches_the_photo_only_near_the_face(astronaut_photo, astronaut_faces, scale):
    photo = astronaut_photo
    faces = astronaut_faces
    if scale != 1:
        photo = F.interpolate(photo, scale_factor=scale, mode="bilinear", align_corners=False)
        faces = FaceDetector().detect(photo)
    photo = photo.clone().requires_grad_(True)
    crops = FaceAligner(TemplateAlignment((112, 112), ARCFACE_112))(photo, faces)
    assert crops.shape == (1, 3, 112, 112)
    (crops * torch.randn_like(crops)).sum().backward()
    grad = photo.grad.abs().sum(1)[0]
    ys, xs = torch.nonzero(grad, as_tuple=True)
    x0, y0, x1, y1 = faces[0].box
    pad = 0.6 * faces[0].width
    assert len(ys) > 0
    assert xs.min() >= x0 - pad and xs.max() <= x1 + pad and ys.min() >= y0 - pad and ys.max() <= y1 + pad
    # antialiased downscale: for a large face every photo pixel inside the face gets gradient, not a sparse grid
    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
    core = grad[cy - 20 * scale : cy + 20 * scale, cx - 20 * scale : cx + 20 * scale]
    assert (core > 0).float().mean() > 0.95


def test_aligned_crop_matches_opencv_warp(astronaut, astronaut_photo, astronaut_faces):
    import cv2

    alignment = TemplateAlignment((112, 112), ARCFACE_112)
    matrix = alignment.matrix(astronaut_faces[0].landmark_array())
    reference = cv2.warpAffine(astronaut.astype(np.float32) / 255, matrix, (112, 112), flags=cv2.INTER_LINEAR)
    ours = FaceAligner(alignment, antialias=False)(astronaut_photo, astronaut_faces)[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - reference)[4:-4, 4:-4].mean() < 2e-3
