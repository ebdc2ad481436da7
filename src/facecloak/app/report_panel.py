"""The report panel: the ProtectionReport of the selected photo, for people."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget

from .preview import to_qimage
from .report_image import basis, quality_line, report_figures, short_headline, threat_lines, worst_case


def limitations_text() -> str:
    try:
        from facecloak.core.report import LIMITATIONS
    except ImportError:
        return (
            "Protection does not remove unprotected photos already online, does not stop systems trained on "
            "you, and cannot promise anything about future recognition models."
        )
    return LIMITATIONS


class ReportPanel(QScrollArea):
    exportJsonRequested = Signal()
    exportPngRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("report")
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        body = QWidget()
        layout = QVBoxLayout(body)
        self.headline = QLabel()
        self.headline.setObjectName("reportHeadline")
        self.headline.setWordWrap(True)
        font = self.headline.font()
        font.setPointSizeF(font.pointSizeF() * 1.3)
        font.setBold(True)
        self.headline.setFont(font)
        self.summary = QLabel()  # what Search and Verification rest on
        self.summary.setWordWrap(True)
        self.summary.setStyleSheet("color: palette(placeholder-text);")
        self.threats = QLabel()  # the three threat models in plain words
        self.threats.setObjectName("reportThreats")
        self.threats.setWordWrap(True)
        self.threats.setTextFormat(Qt.TextFormat.RichText)
        self.worst = QLabel()  # Own original: the worst case, named
        self.worst.setWordWrap(True)
        self.quality = QLabel()
        self.quality.setWordWrap(True)
        self.threat_figure = QLabel()
        self.threat_figure.setObjectName("reportThreatFigure")
        self.threat_figure.setToolTip(
            "Per held-out recogniser: found by a face search among 1,000 to 1,000,000 other faces, linked to another "
            "photo of you, matched to this photo's own original; red = found or linked"
        )
        self.heatmap = QLabel()
        self.heatmap.setObjectName("reportHeatmap")
        self.heatmap.setToolTip("Each cell: one held-out recogniser after one upload degradation; green = not matched")
        self.bars = QLabel()
        self.bars.setObjectName("reportBars")
        self.bars.setToolTip("Similarity to the original face before and after protection, against the match threshold")
        for label in self._figures():
            label.setAlignment(Qt.AlignmentFlag.AlignLeft)
            label.setMinimumWidth(1)  # let the panel be narrower than the picture's native width
        self.limitations = QLabel(limitations_text())
        self.limitations.setObjectName("reportLimitations")
        self.limitations.setWordWrap(True)
        self.limitations.setStyleSheet("color: palette(placeholder-text);")
        buttons = QHBoxLayout()
        self.export_json = QPushButton("Export report JSON…")
        self.export_json.setToolTip("Save the full report (every cell) as JSON")
        self.export_png = QPushButton("Export report PNG…")
        self.export_png.setToolTip("Save the report as one picture")
        self.export_json.clicked.connect(self.exportJsonRequested)
        self.export_png.clicked.connect(self.exportPngRequested)
        buttons.addWidget(self.export_json)
        buttons.addWidget(self.export_png)
        buttons.addStretch(1)
        widgets = (self.headline, self.summary, self.threats, self.worst, self.quality, *self._figures())
        for widget in widgets:
            layout.addWidget(widget)
        layout.addLayout(buttons)
        layout.addWidget(self.limitations)
        layout.addStretch(1)
        self.setWidget(body)
        self.report: Any = None
        self.images: dict[str, np.ndarray] = {}
        self.show_message("Protect a photo to see how well it worked.")

    def _figures(self) -> tuple[QLabel, QLabel, QLabel]:
        return self.threat_figure, self.heatmap, self.bars

    def _set_picture(self, label: QLabel, pixels: np.ndarray | None) -> None:
        if pixels is None:
            label.clear()
            label.setProperty("full", None)
            label.hide()
            return
        label.setProperty("full", QPixmap.fromImage(to_qimage(pixels)))
        self._fit_picture(label)
        label.show()

    def _fit_picture(self, label: QLabel) -> None:
        """Shrink (never enlarge) a picture to the panel's width so the text beside it keeps wrapping."""
        full = label.property("full")
        if not isinstance(full, QPixmap) or full.isNull():
            return
        width = self._figure_width()
        if full.width() > width:
            full = full.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation)
        label.setPixmap(full)

    def _figure_width(self) -> int:
        return max(120, self.viewport().width() - 24)

    def _draw_figures(self) -> None:
        """The figures drawn for the panel's width, so their text stays readable (shrunk only when narrower)."""
        if self.report is None:
            return
        try:
            figures = report_figures(self.report, self.images, max(420, self._figure_width()))
        except Exception:  # a report without the engine's drawing: the pictures the worker made
            figures = []
        if len(figures) == 3:
            pictures = [np.asarray(f.convert("RGB")) for f in figures]
        else:
            pictures = [None, self.images.get("heatmap"), self.images.get("bars")]
        for label, pixels in zip(self._figures(), pictures, strict=True):
            self._set_picture(label, pixels)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self.report is not None and event.size().width() != event.oldSize().width():
            self._draw_figures()

    def show_message(self, text: str) -> None:
        self.report = None
        self.images = {}
        self.headline.setText(text)
        for label in (self.summary, self.threats, self.worst, self.quality):
            label.clear()
        for label in self._figures():
            self._set_picture(label, None)
        self.export_json.setEnabled(False)
        self.export_png.setEnabled(False)

    def show_report(self, report: Any, images: dict[str, np.ndarray], output: Path | None = None) -> None:
        self.report = report
        self.images = images
        self.headline.setText(short_headline(report))
        self.summary.setText(basis(report))
        self.threats.setText(threats_html(report))
        self.worst.setText(worst_case(report))
        where = f"<br>Saved as {html.escape(str(output), quote=False)}" if output else ""
        self.quality.setText(html.escape(quality_line(report), quote=False) + where)
        self._draw_figures()
        self.export_json.setEnabled(True)
        self.export_png.setEnabled(True)


def threats_html(report: Any) -> str:
    """Search and Verification as short paragraphs, each titled in bold (Own original has its own line)."""
    lines = [(t, w) for t, w in threat_lines(report) if not t.startswith("Own original")]
    return "".join(f"<p><b>{html.escape(t, quote=False)}</b>: {html.escape(w, quote=False)}</p>" for t, w in lines)
