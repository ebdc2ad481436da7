"""``facecloak-gui``: start the desktop app."""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from PySide6.QtCore import QCoreApplication, Qt
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    argv = list(sys.argv if argv is None else argv)
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    QCoreApplication.setOrganizationName("FaceCloak")
    QCoreApplication.setApplicationName("FaceCloak")
    app = QApplication.instance() or QApplication(argv)
    app.setApplicationDisplayName("FaceCloak")

    from .window import MainWindow, install_error_hook

    window = MainWindow()
    install_error_hook(window)
    window.show()
    photos = [Path(a) for a in argv[1:] if not a.startswith("-")]
    if photos:
        window.add_paths(photos)
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
