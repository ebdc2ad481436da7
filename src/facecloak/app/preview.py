"""The before/after viewer: split with a draggable divider, side by side, A/B flicker, amplified difference.

Zoom with the wheel (around the cursor), Ctrl+0 fit, Ctrl+1 100% (one photo pixel per screen pixel,
high-DPI aware); pan by dragging or with the arrow keys. Faces are outlined; clicking a face asks to toggle
whether it is protected (``faceToggled``): the window decides and shows the result with ``set_faces``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import QPointF, QRectF, QSizeF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QKeyEvent, QMouseEvent, QPainter, QPen, QWheelEvent
from PySide6.QtWidgets import QSizePolicy, QWidget

SPLIT, SIDE_BY_SIDE, FLICKER, DIFFERENCE = "split", "side", "flicker", "difference"
MODES = (SPLIT, SIDE_BY_SIDE, FLICKER, DIFFERENCE)
DIFF_GAIN = 12  # the change is a few grey levels; x12 makes it visible without saturating everything


def to_qimage(pixels: np.ndarray) -> QImage:
    """``H,W,3`` uint8 RGB array to a QImage that owns its memory."""
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    height, width = pixels.shape[:2]
    return QImage(pixels.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()


def amplified_difference(before: np.ndarray, after: np.ndarray, gain: int = DIFF_GAIN) -> np.ndarray:
    """|after - before| x gain, on a black background, per channel (shows where and how much changed)."""
    diff = np.abs(after.astype(np.int16) - before.astype(np.int16)) * gain
    return np.clip(diff, 0, 255).astype(np.uint8)


def face_numbers(faces: list[Any]) -> list[int]:
    """Each face's number as people read the photo: left to right (then top to bottom), starting at 1."""
    order = sorted(range(len(faces)), key=lambda i: (faces[i].box[0], faces[i].box[1]))
    numbers = [0] * len(faces)
    for number, index in enumerate(order, start=1):
        numbers[index] = number
    return numbers


def place_labels(boxes: list[QRectF], sizes: list[QSizeF], bounds: QRectF, gap: float = 2.0) -> list[QRectF]:
    """Where each face's label goes: just above its box (inside the top of it when there is no room above), kept
    inside ``bounds`` and clear of the labels placed before it (moved down below the one it would cover)."""
    placed: list[QRectF] = []
    for box, size in zip(boxes, sizes, strict=True):
        x = max(bounds.left(), min(box.left(), bounds.right() - size.width()))
        y = box.top() - size.height() - gap
        if y < bounds.top():
            y = max(bounds.top(), box.top()) + gap
        rect = QRectF(QPointF(x, y), size)
        for _ in range(len(placed) + 1):
            hit = next((other for other in placed if other.intersects(rect)), None)
            if hit is None:
                break
            rect.moveTop(hit.bottom() + gap)
        placed.append(rect)
    return placed


class PreviewWidget(QWidget):
    """``faceToggled(index, wanted)`` when a face is clicked; ``zoomChanged(scale)`` whenever the shown scale
    may have changed (zoom, a new photo, a resize at fit)."""

    faceToggled = Signal(int, bool)
    zoomChanged = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("preview")
        self.setMinimumSize(320, 240)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.setToolTip(
            "Drag the divider to compare; wheel to zoom; drag or arrow keys to pan; click a face to protect or skip it"
        )
        self.before: QImage | None = None
        self.after: QImage | None = None
        self._before_px: np.ndarray | None = None
        self._after_px: np.ndarray | None = None
        self._diff: QImage | None = None
        self.after_label = "Protected"
        self.faces: list[Any] = []
        self.enabled: list[bool] = []
        self.mode = SPLIT
        self.divider = 0.5  # fraction of the image width
        self.scale: float | None = None  # None: fit to the view
        self.center = QPointF(0.5, 0.5)  # view centre in image fractions
        self.flicker_show_after = True
        self.placeholder = "Select a photo"
        self._drag: str | None = None
        self._press = QPointF()
        self._last = QPointF()
        self._timer = QTimer(self)
        self._timer.setInterval(600)
        self._timer.timeout.connect(self._flip)

    # -- content -------------------------------------------------------------------------------
    def set_images(self, before: np.ndarray | None, after: np.ndarray | None, after_label: str = "Protected") -> None:
        same_size = self._before_px is not None and before is not None and self._before_px.shape == before.shape
        self._before_px, self._after_px = before, after
        self.before = to_qimage(before) if before is not None else None
        self.after = to_qimage(after) if after is not None else None
        self.after_label = after_label
        self._diff = None
        if not same_size:
            self.scale, self.center = None, QPointF(0.5, 0.5)
        self.zoomChanged.emit(self.current_scale())
        self.update()

    def set_faces(self, faces: list[Any], enabled: list[bool]) -> None:
        self.faces, self.enabled = list(faces), list(enabled)
        self.update()

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(mode)
        self.mode = mode
        if mode == FLICKER:
            self._timer.start()
        else:
            self._timer.stop()
        self.zoomChanged.emit(self.current_scale())  # side by side halves the fit
        self.update()

    def difference_image(self) -> QImage | None:
        before, after = self._before_px, self._after_px
        if self._diff is None and before is not None and after is not None and before.shape == after.shape:
            self._diff = to_qimage(amplified_difference(self._before_px, self._after_px))
        return self._diff

    def _flip(self) -> None:
        self.flicker_show_after = not self.flicker_show_after
        self.update()

    # -- geometry ------------------------------------------------------------------------------
    def _panes(self) -> list[QRectF]:
        r = QRectF(self.rect()).adjusted(4, 4, -4, -4)
        if self.mode == SIDE_BY_SIDE:
            half = (r.width() - 8) / 2
            return [QRectF(r.left(), r.top(), half, r.height()), QRectF(r.left() + half + 8, r.top(), half, r.height())]
        return [r]

    def fit_scale(self) -> float:
        if self.before is None:
            return 1.0
        pane = self._panes()[0]
        return min(pane.width() / self.before.width(), pane.height() / self.before.height())

    def current_scale(self) -> float:
        return self.scale if self.scale is not None else self.fit_scale()

    @property
    def fitted(self) -> bool:
        """Whether the photo is fitted to the view (the scale then follows the view's size)."""
        return self.scale is None

    def zoom_text(self) -> str:
        """The zoom for a label: "Fit 37%" at fit, "100%" otherwise, "" without a photo."""
        if self.before is None:
            return ""
        percent = f"{self.current_scale() * self.devicePixelRatioF():.0%}"
        return f"Fit {percent}" if self.fitted else percent

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.fitted and self.before is not None:
            self.zoomChanged.emit(self.current_scale())

    def image_rect(self, pane: QRectF) -> QRectF:
        """Where the whole image lands in a pane at the current zoom and pan."""
        s = self.current_scale()
        w, h = self.before.width() * s, self.before.height() * s
        if self.scale is None:
            cx, cy = 0.5, 0.5
        else:
            cx, cy = self.center.x(), self.center.y()
        return QRectF(pane.center().x() - cx * w, pane.center().y() - cy * h, w, h)

    def set_zoom(self, scale: float | None, anchor: QPointF | None = None) -> None:
        """``scale`` in screen pixels per image pixel (None: fit); keeps the image point under ``anchor``."""
        if self.before is None:
            return
        if scale is not None:
            scale = max(0.02, min(32.0, scale))
            if anchor is not None:
                pane = self._pane_at(anchor)
                rect = self.image_rect(pane)
                fx = (anchor.x() - rect.left()) / rect.width()
                fy = (anchor.y() - rect.top()) / rect.height()
                w, h = self.before.width() * scale, self.before.height() * scale
                # choose the centre so that (fx, fy) stays under the anchor
                cx = fx - (anchor.x() - pane.center().x()) / w
                cy = fy - (anchor.y() - pane.center().y()) / h
                self.center = QPointF(cx, cy)
            elif self.scale is None:
                self.center = QPointF(0.5, 0.5)
        self.scale = scale
        self._clamp_center()
        self.zoomChanged.emit(self.current_scale())
        self.update()

    def zoom_actual(self) -> None:
        """100%: one photo pixel per physical screen pixel."""
        self.set_zoom(1.0 / self.devicePixelRatioF())

    def zoom_fit(self) -> None:
        self.set_zoom(None)

    def zoom_by(self, factor: float, anchor: QPointF | None = None) -> None:
        self.set_zoom(self.current_scale() * factor, anchor)

    def pan_by(self, dx: float, dy: float) -> None:
        if self.before is None or self.scale is None:
            return
        s = self.current_scale()
        self.center = QPointF(
            self.center.x() - dx / (self.before.width() * s), self.center.y() - dy / (self.before.height() * s)
        )
        self._clamp_center()
        self.update()

    def _clamp_center(self) -> None:
        self.center = QPointF(min(1.0, max(0.0, self.center.x())), min(1.0, max(0.0, self.center.y())))

    def _pane_at(self, pos: QPointF) -> QRectF:
        panes = self._panes()
        for pane in panes:
            if pane.contains(pos):
                return pane
        return panes[0]

    def _to_image(self, pos: QPointF) -> QPointF | None:
        if self.before is None:
            return None
        rect = self.image_rect(self._pane_at(pos))
        s = self.current_scale()
        return QPointF((pos.x() - rect.left()) / s, (pos.y() - rect.top()) / s)

    def _divider_x(self) -> float:
        rect = self.image_rect(self._panes()[0])
        return rect.left() + self.divider * rect.width()

    def face_at(self, pos: QPointF) -> int | None:
        point = self._to_image(pos)
        if point is None:
            return None
        for i, face in enumerate(self.faces):
            x0, y0, x1, y1 = face.box
            if x0 <= point.x() <= x1 and y0 <= point.y() <= y1:
                return i
        return None

    # -- painting ------------------------------------------------------------------------------
    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, self.current_scale() < 1.0)
        palette = self.palette()
        painter.fillRect(self.rect(), palette.color(palette.ColorRole.Base).darker(110))
        if self.before is None:
            painter.setPen(palette.color(palette.ColorRole.PlaceholderText))
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, self.placeholder)
            return
        after = self.after
        panes = self._panes()
        if self.mode == SIDE_BY_SIDE:
            for pane, image, label in ((panes[0], self.before, "Original"), (panes[1], after, self.after_label)):
                painter.save()
                painter.setClipRect(pane)
                rect = self.image_rect(pane)
                if image is not None:
                    painter.drawImage(rect, image)
                    self._draw_faces(painter, rect)
                painter.restore()
                self._label(
                    painter, pane.topLeft() + QPointF(8, 8), label if image is not None else "Not protected yet"
                )
            return
        pane = panes[0]
        rect = self.image_rect(pane)
        painter.setClipRect(pane)
        if self.mode == DIFFERENCE:
            diff = self.difference_image()
            painter.drawImage(rect, diff if diff is not None else self.before)
            self._draw_faces(painter, rect)
            text = f"Amplified difference (x{DIFF_GAIN})" if diff is not None else "Original (no protected version yet)"
            self._label(painter, pane.topLeft() + QPointF(8, 8), text)
            return
        if self.mode == FLICKER:
            show_after = self.flicker_show_after and after is not None
            painter.drawImage(rect, after if show_after else self.before)
            self._draw_faces(painter, rect)
            self._label(painter, pane.topLeft() + QPointF(8, 8), self.after_label if show_after else "Original")
            return
        # split: original on the left of the divider, protected on the right
        painter.drawImage(rect, self.before)
        if after is not None:
            x = self._divider_x()
            painter.save()
            painter.setClipRect(QRectF(x, pane.top(), pane.right() - x, pane.height()).intersected(pane))
            painter.drawImage(rect, after)
            painter.restore()
        self._draw_faces(painter, rect)
        if after is not None:
            x = self._divider_x()
            painter.setPen(QPen(QColor(255, 255, 255, 230), 2))
            painter.drawLine(QPointF(x, pane.top()), QPointF(x, pane.bottom()))
            painter.setBrush(QColor(255, 255, 255, 230))
            painter.setPen(QPen(QColor(40, 40, 40), 1))
            painter.drawEllipse(QPointF(x, pane.center().y()), 9, 9)
            self._label(painter, pane.topLeft() + QPointF(8, 8), "Original")
            self._label(painter, QPointF(pane.right() - 8, pane.top() + 8), self.after_label, right=True)
        else:
            self._label(painter, pane.topLeft() + QPointF(8, 8), "Original")

    def face_rects(self, rect: QRectF) -> list[QRectF]:
        """Each face's box on screen for the image drawn at ``rect``, cut to the image (detectors may overhang)."""
        s = self.current_scale()
        boxes = []
        for face in self.faces:
            x0, y0, x1, y1 = face.box
            box = QRectF(rect.left() + x0 * s, rect.top() + y0 * s, (x1 - x0) * s, (y1 - y0) * s)
            boxes.append(box.intersected(rect))
        return boxes

    def face_label(self, index: int) -> str:
        on = self.enabled[index] if index < len(self.enabled) else True
        return f"Face {face_numbers(self.faces)[index]}: {'protect' if on else 'skip'}"

    def label_rects(self, rect: QRectF, boxes: list[QRectF]) -> list[QRectF]:
        metrics = self.fontMetrics()
        sizes = [
            QSizeF(metrics.horizontalAdvance(self.face_label(i)) + 12, metrics.height() + 6) for i in range(len(boxes))
        ]
        return place_labels(boxes, sizes, rect.intersected(QRectF(self.rect())))

    def _draw_faces(self, painter: QPainter, rect: QRectF) -> None:
        boxes = self.face_rects(rect)
        for i, box in enumerate(boxes):
            on = self.enabled[i] if i < len(self.enabled) else True
            pen = QPen(QColor(60, 200, 120) if on else QColor(200, 200, 200), 2)
            if not on:
                pen.setStyle(Qt.PenStyle.DashLine)
            painter.setPen(pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawRect(box.adjusted(1, 1, -1, -1))  # the pen stays inside the image
        for i, where in enumerate(self.label_rects(rect, boxes)):
            self._label(painter, where.topLeft(), self.face_label(i))

    def _label(self, painter: QPainter, pos: QPointF, text: str, right: bool = False) -> None:
        painter.save()
        painter.setFont(self.font())
        metrics = painter.fontMetrics()
        w, h = metrics.horizontalAdvance(text) + 12, metrics.height() + 6
        x = pos.x() - w if right else pos.x()
        box = QRectF(x, pos.y(), w, h)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(0, 0, 0, 160))
        painter.drawRoundedRect(box, 4, 4)
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()

    # -- input ---------------------------------------------------------------------------------
    def mousePressEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        self._press = self._last = pos
        self.setFocus()
        if (
            self.mode == SPLIT
            and self.after is not None
            and self.before is not None
            and abs(pos.x() - self._divider_x()) < 10
        ):
            self._drag = "divider"
        else:
            self._drag = "pan"

    def mouseMoveEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        if self._drag == "divider":
            rect = self.image_rect(self._panes()[0])
            self.divider = min(1.0, max(0.0, (pos.x() - rect.left()) / max(1.0, rect.width())))
            self.update()
        elif self._drag == "pan":
            self.pan_by(pos.x() - self._last.x(), pos.y() - self._last.y())
        elif self.mode == SPLIT and self.after is not None and self.before is not None:
            near = abs(pos.x() - self._divider_x()) < 10
            self.setCursor(Qt.CursorShape.SplitHCursor if near else Qt.CursorShape.ArrowCursor)
        self._last = pos

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:
        pos = event.position()
        moved = (pos - self._press).manhattanLength()
        if self._drag == "pan" and moved < 4:
            index = self.face_at(pos)
            if index is not None and index < len(self.enabled):
                self.faceToggled.emit(index, not self.enabled[index])
        self._drag = None

    def wheelEvent(self, event: QWheelEvent) -> None:
        steps = event.angleDelta().y() / 120
        if steps:
            self.zoom_by(1.25**steps, event.position())

    def keyPressEvent(self, event: QKeyEvent) -> None:
        step = 60
        key = event.key()
        moves = {
            Qt.Key.Key_Left: (step, 0),
            Qt.Key.Key_Right: (-step, 0),
            Qt.Key.Key_Up: (0, step),
            Qt.Key.Key_Down: (0, -step),
        }
        if key in moves:
            self.pan_by(*moves[key])
        elif key in (Qt.Key.Key_Plus, Qt.Key.Key_Equal):
            self.zoom_by(1.25)
        elif key == Qt.Key.Key_Minus:
            self.zoom_by(0.8)
        else:
            super().keyPressEvent(event)
