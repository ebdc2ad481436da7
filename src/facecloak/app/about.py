"""The About box: version, what FaceCloak does, and every model with its role, licences and training data."""

from __future__ import annotations

from html import escape as _escape
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog, QDialogButtonBox, QTextBrowser, QVBoxLayout, QWidget

ROLE_NAMES = (
    ("ensemble", "attack ensemble"),
    ("evaluators", "held-out evaluator"),
    ("tuning", "tuning judge (benchmarks only)"),
)


def escape(text: str) -> str:
    """Text for the About box's HTML (quotes stay as they are: they are never inside an attribute here)."""
    return _escape(text, quote=False)


def model_role(name: str, roles: dict[str, list[str]]) -> str:
    """What the app uses model ``name`` for, in words."""
    return next((words for role, words in ROLE_NAMES if name in roles.get(role, [])), "available")


def about_html(manifest: dict[str, Any], roles: dict[str, list[str]], version: str, limitations: str) -> str:
    rows = "".join(
        f"<tr><td>{escape(spec.display_name)}</td><td>{model_role(name, roles)}</td>"
        f"<td>{escape(spec.model_licence)}</td><td>{escape(spec.package_licence)}</td>"
        f"<td>{escape(spec.training_data)}</td></tr>"
        for name, spec in manifest.items()
    )
    return (
        f"<h3>FaceCloak {escape(version)}</h3>"
        "<p>Protects photos from face recognition on your own machine and measures the result on "
        "held-out recognisers. Nothing leaves this computer.</p>"
        "<table cellspacing=6><tr><th align=left>Model</th><th align=left>Role</th>"
        "<th align=left>Model licence</th><th align=left>Package licence</th><th align=left>Training data</th></tr>"
        f"{rows}</table>"
        f"<p><small>{escape(limitations)}</small></p>"
    )


class AboutDialog(QDialog):
    """Non-modal, deleted when closed."""

    def __init__(self, html: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("aboutBox")
        self.setWindowTitle("About FaceCloak")
        layout = QVBoxLayout(self)
        self.text = QTextBrowser()
        self.text.setOpenExternalLinks(False)
        self.text.setHtml(html)
        layout.addWidget(self.text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.close)
        layout.addWidget(buttons)
        self.resize(900, 600)
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
