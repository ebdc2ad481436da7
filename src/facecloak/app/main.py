"""``facecloak-gui``: start the desktop app."""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from PySide6.QtCore import QCoreApplication, Qt, QTimer
    from PySide6.QtGui import QGuiApplication
    from PySide6.QtWidgets import QApplication

    argv = list(sys.argv if argv is None else argv)
    if "--version" in argv[1:]:
        from facecloak import __version__

        print(f"FaceCloak {__version__}")
        return 0
    # --quit-after=MS: leave the event loop MS ms after the window is shown (start-up timing, smoke tests)
    quit_after = next((int(a.split("=", 1)[1]) for a in argv[1:] if a.startswith("--quit-after=")), None)
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    QCoreApplication.setOrganizationName("FaceCloak")
    QCoreApplication.setApplicationName("FaceCloak")
    app = QApplication.instance() or QApplication(argv)
    app.setApplicationDisplayName("FaceCloak")
    from .first_run import app_icon, offer_first_run

    app.setWindowIcon(app_icon())
    QGuiApplication.setDesktopFileName("facecloak")  # Wayland/X11 match the window to facecloak.desktop

    from .window import MainWindow, install_error_hook

    window = MainWindow()
    install_error_hook(window)
    # quitting without closing the window (--quit-after, the session ending): the worker thread stops first,
    # since a QThread destroyed while it runs aborts the process
    app.aboutToQuit.connect(lambda: window.shutdown() or window.thread.wait())
    window.show()
    photos = [Path(a) for a in argv[1:] if not a.startswith("-")]
    if photos:
        window.add_paths(photos)
    if quit_after is not None:
        QTimer.singleShot(quit_after, app.quit)
    else:
        QTimer.singleShot(0, lambda: offer_first_run(window))  # models missing: build them behind a dialog
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
