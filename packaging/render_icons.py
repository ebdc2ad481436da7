"""Render the app icon (src/facecloak/resources/icons/facecloak.svg) to the PNG sizes desktops ask for.

Usage: ``QT_QPA_PLATFORM=offscreen python packaging/render_icons.py`` (rewrites src/facecloak/resources/icons/*.png).
"""

from __future__ import annotations

import sys
from pathlib import Path

SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICONS = Path(__file__).resolve().parents[1] / "src" / "facecloak" / "resources" / "icons"


def render(svg: Path = ICONS / "facecloak.svg", out_dir: Path = ICONS, sizes: tuple[int, ...] = SIZES) -> list[Path]:
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # QPainter on images needs a Gui app
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise ValueError(f"{svg} is not a valid SVG")
    written = []
    for size in sizes:
        image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter)
        painter.end()
        path = out_dir / f"facecloak-{size}.png"
        if not image.save(str(path)):
            raise OSError(f"could not write {path}")
        written.append(path)
    # the unsized name is what the window, the .desktop file and PyInstaller use
    main = out_dir / f"facecloak-{256 if 256 in sizes else max(sizes)}.png"
    (out_dir / "facecloak.png").write_bytes(main.read_bytes())
    return written


if __name__ == "__main__":
    for path in render():
        print(path)
