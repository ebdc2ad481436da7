"""Light and dark looks: the Fusion style with a palette that follows the desktop (or the user's choice).

Photo apps (darktable, digiKam, Lightroom) default to a dark neutral grey so the photo is the brightest thing on
screen; FaceCloak follows the desktop's colour scheme and lets View > Theme force either.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette

SYSTEM, LIGHT, DARK = "system", "light", "dark"
CHOICES = (SYSTEM, LIGHT, DARK)
ACCENT = QColor(61, 122, 214)  # selection and the primary action, readable on both looks

_ROLES = QPalette.ColorRole
_DARK = {
    _ROLES.Window: QColor(43, 43, 45),
    _ROLES.WindowText: QColor(222, 222, 222),
    _ROLES.Base: QColor(30, 30, 32),
    _ROLES.AlternateBase: QColor(52, 52, 56),
    _ROLES.ToolTipBase: QColor(58, 58, 62),
    _ROLES.ToolTipText: QColor(238, 238, 238),
    _ROLES.Text: QColor(222, 222, 222),
    _ROLES.PlaceholderText: QColor(140, 140, 146),
    _ROLES.Button: QColor(55, 55, 59),
    _ROLES.ButtonText: QColor(222, 222, 222),
    _ROLES.BrightText: QColor(255, 90, 90),
    _ROLES.Light: QColor(80, 80, 86),
    _ROLES.Midlight: QColor(64, 64, 68),
    _ROLES.Mid: QColor(90, 90, 96),
    _ROLES.Dark: QColor(24, 24, 26),
    _ROLES.Shadow: QColor(0, 0, 0),
    _ROLES.Highlight: ACCENT,
    _ROLES.HighlightedText: QColor(255, 255, 255),
    _ROLES.Link: QColor(110, 168, 255),
    _ROLES.LinkVisited: QColor(170, 140, 255),
}
_LIGHT = {
    _ROLES.Window: QColor(239, 239, 241),
    _ROLES.WindowText: QColor(30, 30, 32),
    _ROLES.Base: QColor(255, 255, 255),
    _ROLES.AlternateBase: QColor(228, 228, 232),
    _ROLES.ToolTipBase: QColor(255, 255, 225),
    _ROLES.ToolTipText: QColor(20, 20, 20),
    _ROLES.Text: QColor(30, 30, 32),
    _ROLES.PlaceholderText: QColor(120, 120, 126),
    _ROLES.Button: QColor(232, 232, 236),
    _ROLES.ButtonText: QColor(30, 30, 32),
    _ROLES.BrightText: QColor(200, 0, 0),
    _ROLES.Light: QColor(255, 255, 255),
    _ROLES.Midlight: QColor(245, 245, 247),
    _ROLES.Mid: QColor(170, 170, 176),
    _ROLES.Dark: QColor(150, 150, 156),
    _ROLES.Shadow: QColor(90, 90, 96),
    _ROLES.Highlight: ACCENT,
    _ROLES.HighlightedText: QColor(255, 255, 255),
    _ROLES.Link: QColor(30, 90, 200),
    _ROLES.LinkVisited: QColor(110, 60, 180),
}
_DISABLED = (_ROLES.WindowText, _ROLES.Text, _ROLES.ButtonText)


def palette(dark: bool) -> QPalette:
    """The full palette of one look; disabled text greyed towards the background."""
    colours = _DARK if dark else _LIGHT
    result = QPalette()
    for role, colour in colours.items():
        result.setColor(role, colour)
    for role in _DISABLED:
        faded = QColor(128, 128, 132) if dark else QColor(150, 150, 156)
        result.setColor(QPalette.ColorGroup.Disabled, role, faded)
    return result


def wants_dark(choice: str, scheme: Qt.ColorScheme) -> bool:
    """Whether ``choice`` (system, light, dark) means the dark look when the desktop's scheme is ``scheme``."""
    if choice == DARK:
        return True
    if choice == LIGHT:
        return False
    return scheme == Qt.ColorScheme.Dark


def is_dark(pal: QPalette) -> bool:
    return pal.color(QPalette.ColorRole.Window).lightness() < 128


def apply_theme(app: QGuiApplication, choice: str) -> bool:
    """Give ``app`` the look ``choice`` means today; returns whether it is the dark one."""
    from PySide6.QtWidgets import QApplication

    dark = wants_dark(choice if choice in CHOICES else SYSTEM, app.styleHints().colorScheme())
    if isinstance(app, QApplication) and app.style().name().lower() != "fusion":
        app.setStyle("Fusion")  # the native styles of Windows and macOS ignore parts of a custom palette
    app.setPalette(palette(dark))
    return dark
