"""The window's commands: every action with its shortcut, tooltip and icon, and where menus and toolbar show them.

:data:`COMMANDS` is the table (one row per command, calling a method of the window); :func:`install` makes the
actions (``window.act_<name>``), the menus and the toolbar. Tooltips end with the shortcut, so hovering a button
teaches its key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence, QPalette
from PySide6.QtWidgets import QMainWindow, QSizePolicy, QToolButton, QWidget

from . import theme
from .icons import make_icon
from .model import PREVIEW_STEPS
from .preview import DIFFERENCE, FLICKER, SIDE_BY_SIDE, SPLIT

ICON_SIZE = QSize(20, 20)
PRIMARY_STYLE = (
    "QToolButton#primaryAction { background: palette(highlight); color: palette(highlighted-text);"
    " border-radius: 5px; padding: 4px 12px; font-weight: bold; }"
    "QToolButton#primaryAction:hover { background: palette(link); }"
    "QToolButton#primaryAction:disabled { background: palette(mid); color: palette(window); }"
)


@dataclass(frozen=True)
class Command:
    name: str  # the window gets it as ``act_<name>``
    text: str
    tip: str
    slot: str  # the window's method it calls
    shortcut: Any = None
    icon: str = ""  # a key of icons.SHAPES
    checkable: bool = False


COMMANDS = (
    Command("open", "&Open…", "Add photos to the album", "open_files", QKeySequence.StandardKey.Open, "open"),
    Command(
        "open_folder", "Open &folder…", "Add every photo in a folder and its subfolders", "open_folder",
        "Ctrl+Shift+O", "folder",
    ),
    Command("export", "&Export protected…", "Write the album's protected copies to a folder", "ask_export", "Ctrl+E",
            "export"),
    Command("remove", "&Remove from album", "Remove the selected photos from the album (their files stay)",
            "remove_selected", "Del", "remove"),
    Command("clear", "&Clear album…", "Remove every photo from the album (their files stay)", "clear_album",
            icon="clear"),
    Command("quit", "&Quit", "Quit FaceCloak", "close", QKeySequence.StandardKey.Quit),
    Command("protect", "&Protect all", "Protect every photo not yet protected with these settings", "protect_all",
            "Ctrl+Return", "protect"),
    Command("again", "Protect &again", "Protect the selected photos (again) from their originals with the current "
            "settings", "protect_selected", "Ctrl+Shift+Return", "again"),
    Command("look", "Preview &look", f"A fast {PREVIEW_STEPS}-step preview of the selected photo (not saved)",
            "preview_look", "Ctrl+L", "look"),
    Command("pause", "P&ause", "Pause or resume the run (within a second)", "toggle_pause", "Ctrl+Space", "pause",
            checkable=True),
    Command("cancel", "&Cancel", "Stop the run within a second (finished photos stay saved)", "cancel", "Esc",
            "cancel"),
    Command("reveal", "Show protected copy in folder", "Open the folder that holds the protected copy",
            "reveal_current", icon="folder"),
    Command("fit", "Zoom to &fit", "Fit the photo in the view", "zoom_fit", "Ctrl+0", "fit"),
    Command("actual", "&Actual pixels (100%)", "One photo pixel per screen pixel", "zoom_actual", "Ctrl+1", "actual"),
    Command("zoom_in", "Zoom &in", "Zoom in", "zoom_in", QKeySequence.StandardKey.ZoomIn),
    Command("zoom_out", "Zoom &out", "Zoom out", "zoom_out", QKeySequence.StandardKey.ZoomOut),
    Command("about", "&About FaceCloak", "Version, models and licences", "show_about", icon="about"),
)  # fmt: skip
VIEW_MODES = {
    SPLIT: ("&Split", "1", "Before | after with a draggable divider", "split"),
    SIDE_BY_SIDE: ("Side &by side", "2", "Original and protected next to each other", "side"),
    FLICKER: ("A/B &flicker", "3", "Alternate original and protected", "flicker"),
    DIFFERENCE: ("&Difference", "4", "Amplified difference: where the change is", "difference"),
}
THEMES = ((theme.SYSTEM, "Follow the &system"), (theme.LIGHT, "&Light"), (theme.DARK, "&Dark"))
MENUS = (
    ("&File", ("open", "open_folder", "export", None, "remove", "clear", None, "quit")),
    ("&Protect", ("protect", "again", "look", None, "pause", "cancel")),
    ("&View", ("fit", "actual", "zoom_in", "zoom_out")),
    ("&Help", ("about",)),
)


def make_action(parent: QWidget, command: Command, slot) -> QAction:
    action = QAction(command.text, parent)
    if command.shortcut is not None:
        action.setShortcut(QKeySequence(command.shortcut))
        keys = action.shortcut().toString(QKeySequence.SequenceFormat.NativeText)
        action.setToolTip(f"{command.tip} ({keys})")
    else:
        action.setToolTip(command.tip)
    action.setStatusTip(command.tip)
    action.setCheckable(command.checkable)
    action.triggered.connect(slot)
    if command.icon:
        action.setProperty("iconName", command.icon)
    return action


def install(window: QMainWindow) -> None:
    """Give ``window`` its actions (``act_<name>``, ``view_actions``, ``theme_actions``), menus and toolbar."""
    for command in COMMANDS:
        method = getattr(window, command.slot)
        setattr(window, f"act_{command.name}", make_action(window, command, lambda _c=False, m=method: m()))
    # Ctrl with the keypad's Enter as well as the main Return key
    window.act_protect.setShortcuts([QKeySequence("Ctrl+Return"), QKeySequence("Ctrl+Enter")])
    window.view_group = QActionGroup(window)
    window.view_actions = {}
    for mode, (text, key, tip, icon) in VIEW_MODES.items():
        command = Command(mode, text, tip, "set_view_mode", key, icon, checkable=True)
        act = make_action(window, command, lambda _c=False, m=mode: window.set_view_mode(m))
        window.view_group.addAction(act)
        window.view_actions[mode] = act
    window.view_actions[SPLIT].setChecked(True)
    window.theme_group = QActionGroup(window)
    window.theme_actions = {}
    for choice, text in THEMES:
        command = Command(choice, text, f"The {choice} look", "set_theme", checkable=True)
        act = make_action(window, command, lambda _c=False, c=choice: window.set_theme(c))
        window.theme_group.addAction(act)
        window.theme_actions[choice] = act
    _install_menus(window)
    _install_toolbar(window)


def _install_menus(window: QMainWindow) -> None:
    bar = window.menuBar()
    for title, names in MENUS:
        menu = bar.addMenu(title)
        if title == "&View":
            for act in window.view_actions.values():
                menu.addAction(act)
            menu.addSeparator()
        for name in names:
            menu.addAction(getattr(window, f"act_{name}")) if name else menu.addSeparator()
        if title == "&View":
            themes = menu.addMenu("&Theme")
            for act in window.theme_actions.values():
                themes.addAction(act)


def _install_toolbar(window: QMainWindow) -> None:
    """Adding photos, then the run (the primary action stands out), then viewing and export at the right."""
    tools = window.toolbar = window.addToolBar("Main")
    tools.setObjectName("mainToolbar")
    tools.setMovable(False)
    tools.setIconSize(ICON_SIZE)
    tools.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    tools.addAction(window.act_open)
    tools.addAction(window.act_open_folder)
    tools.addSeparator()
    button = window.protect_button = QToolButton()
    button.setObjectName("primaryAction")
    button.setText("Protect all")
    button.setToolTip(window.act_protect.toolTip())
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
    button.setIconSize(ICON_SIZE)
    button.setStyleSheet(PRIMARY_STYLE)
    button.clicked.connect(window.act_protect.trigger)
    window.act_protect.changed.connect(lambda: button.setEnabled(window.act_protect.isEnabled()))
    tools.addWidget(button)
    for act in (window.act_look, window.act_pause, window.act_cancel):
        tools.addAction(act)
    spacer = QWidget()
    spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
    tools.addWidget(spacer)
    for act in (*window.view_actions.values(), None, window.act_fit, window.act_actual, None):
        if act is None:
            tools.addSeparator()
            continue
        tools.addAction(act)  # secondary: icons only, the tooltip names them
        tools.widgetForAction(act).setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
    tools.addAction(window.act_export)


def refresh_icons(window: QMainWindow, palette: QPalette | None = None) -> None:
    """Draw every action's icon in the text colour of ``palette`` (default: the window's), again when it changes."""
    palette = palette or window.palette()
    colour = palette.color(palette.ColorRole.WindowText)
    for act in window.findChildren(QAction):
        name = act.property("iconName")
        if name:
            act.setIcon(make_icon(name, colour))
    window.protect_button.setIcon(make_icon("protect", palette.color(palette.ColorRole.HighlightedText)))
