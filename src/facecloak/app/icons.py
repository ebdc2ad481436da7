"""The toolbar and menu icons: simple line drawings, drawn in the palette's text colour so they suit light and dark.

Each icon is a 24 x 24 SVG body rendered with Qt's SVG renderer (no icon theme needed: Linux desktops, the
bundle and Windows all look the same).
"""

from __future__ import annotations

from PySide6.QtCore import QByteArray, QRectF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPixmap
from PySide6.QtSvg import QSvgRenderer

SIZES = (16, 20, 24, 32, 48)

SHAPES: dict[str, str] = {
    "open": '<path d="M3 6.5h6l2 2h10V19H3z"/><path d="M12 11v6M9 14h6"/>',
    "folder": '<path d="M3 6.5h6l2 2h10V19H3z"/>',
    "protect": '<path d="M12 3l8 3v6c0 5-3.5 8-8 9-4.5-1-8-4-8-9V6z"/><path d="M8.5 12l2.5 2.5 4.5-5"/>',
    "look": '<path d="M2 12s4-7 10-7 10 7 10 7-4 7-10 7S2 12 2 12z"/><circle cx="12" cy="12" r="3"/>',
    "pause": '<path d="M8.5 5v14M15.5 5v14"/>',
    "cancel": '<circle cx="12" cy="12" r="9"/><path d="M9 9l6 6M15 9l-6 6"/>',
    "export": '<path d="M12 3v12M7.5 7.5 12 3l4.5 4.5"/><path d="M4 13v7h16v-7"/>',
    "split": '<rect x="3" y="4" width="18" height="16" rx="2"/><path d="M12 2v20"/>',
    "side": '<rect x="2" y="5" width="9" height="14" rx="1.5"/><rect x="13" y="5" width="9" height="14" rx="1.5"/>',
    "flicker": '<path d="M4 9h14l-3.5-3.5M20 15H6l3.5 3.5"/>',
    "difference": '<circle cx="9" cy="12" r="6"/><circle cx="15" cy="12" r="6"/>',
    "fit": '<path d="M4 9V4h5M20 9V4h-5M4 15v5h5M20 15v5h-5"/>',
    "actual": '<path d="M5 8.5 7.5 6v12M16.5 8.5 19 6v12"/><path d="M12 10v.5M12 14.5v.5"/>',
    "about": '<circle cx="12" cy="12" r="9"/><path d="M12 11v6M12 7.5v.5"/>',
    "remove": '<path d="M4 7h16M9.5 7V4h5v3M6 7l1 13h10l1-13"/>',
    "again": '<path d="M20 12a8 8 0 1 1-2.4-5.7M20 4v5h-5"/>',
    "clear": '<path d="M5 5l14 14M19 5 5 19"/>',
}


def svg(name: str, colour: QColor) -> bytes:
    body = SHAPES[name]
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" '
        f'stroke="{colour.name()}" stroke-width="1.8" stroke-linecap="round" stroke-linejoin="round">{body}</svg>'
    ).encode()


def make_icon(name: str, colour: QColor) -> QIcon:
    """Icon ``name`` (a key of :data:`SHAPES`) drawn in ``colour`` at every size of :data:`SIZES`."""
    renderer = QSvgRenderer(QByteArray(svg(name, colour)))
    icon = QIcon()
    for size in SIZES:
        pixmap = QPixmap(size, size)
        pixmap.fill(Qt.GlobalColor.transparent)
        painter = QPainter(pixmap)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        renderer.render(painter, QRectF(0, 0, size, size))
        painter.end()
        icon.addPixmap(pixmap)
    return icon
