"""The report panel: the ProtectionReport of the selected photo, for people."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QScrollArea, QVBoxLayout, QWidget

from .preview import to_qimage
from .report_image import headline, quality_line, worst_case


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
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.worst = QLabel()
        self.worst.setWordWrap(True)
        self.quality = QLabel()
        self.quality.setWordWrap(True)
        self.heatmap = QLabel()
        self.heatmap.setObjectName("reportHeatmap")
        self.heatmap.setToolTip("Each cell: one held-out recogniser after one upload degradation; green = not matched")
        self.bars = QLabel()
        self.bars.setObjectName("reportBars")
        self.bars.setToolTip("Similarity to the original face before and after protection, against the match threshold")
        for label in (self.heatmap, self.bars):
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
        for widget in (self.headline, self.summary, self.worst, self.quality, self.heatmap, self.bars):
            layout.addWidget(widget)
        layout.addLayout(buttons)
        layout.addWidget(self.limitations)
        layout.addStretch(1)
        self.setWidget(body)
        self.report: Any = None
        self.show_message("Protect a photo to see how well it worked.")

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
        width = max(120, self.viewport().width() - 24)
        if full.width() > width:
            full = full.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation)
        label.setPixmap(full)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        for label in (self.heatmap, self.bars):
            self._fit_picture(label)

    def show_message(self, text: str) -> None:
        self.report = None
        self.headline.setText(text)
        for label in (self.summary, self.worst, self.quality):
            label.clear()
        self._set_picture(self.heatmap, None)
        self._set_picture(self.bars, None)
        self.export_json.setEnabled(False)
        self.export_png.setEnabled(False)

    def show_report(self, report: Any, images: dict[str, np.ndarray], output: Path | None = None) -> None:
        self.report = report
        self.headline.setText(headline(report))
        self.summary.setText(report.summary)
        self.worst.setText(worst_case(report))
        where = f"<br>Saved as {output}" if output else ""
        self.quality.setText(quality_line(report) + where)
        self._set_picture(self.heatmap, images.get("heatmap"))
        self._set_picture(self.bars, images.get("bars"))
        self.export_json.setEnabled(True)
        self.export_png.setEnabled(True)
