"""Album strip (thumbnails with status badges), the empty-state drop zone, and the highlight shown while dragging.

The strip is keyboard driven like a file manager's: arrows move, Delete removes the selected photos (through the
window, which asks when something would be lost), the context menu is the window's.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QModelIndex, QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QDragEnterEvent, QDragLeaveEvent, QDropEvent, QKeyEvent, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QVBoxLayout,
    QWidget,
)

from .model import DETECTING, ERROR, NO_FACE, PROTECTED, PROTECTING, QUEUED, PhotoEntry
from .preview import to_qimage

KEY_ROLE = Qt.ItemDataRole.UserRole + 1
STATUS_ROLE = Qt.ItemDataRole.UserRole + 2
PROGRESS_ROLE = Qt.ItemDataRole.UserRole + 3
THUMB_ROLE = Qt.ItemDataRole.UserRole + 4

BADGE_COLOURS = {
    QUEUED: QColor(120, 120, 130),
    DETECTING: QColor(70, 130, 200),
    PROTECTING: QColor(215, 140, 30),
    "measuring": QColor(150, 110, 210),
    PROTECTED: QColor(40, 160, 90),
    NO_FACE: QColor(110, 110, 110),
    ERROR: QColor(200, 60, 60),
}
TILE = QSize(176, 196)
MEASURING = "measuring the protection (report)"  # the note of a photo whose steps are done and report runs


def local_paths(mime) -> list[Path]:
    """Local files and folders carried by a drag (URLs from the file manager)."""
    return [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()] if mime.hasUrls() else []


class PathDropTarget:
    """Mixin for Qt widgets: accept drops of local files and folders and hand their paths to ``paths_dropped``.

    ``drop_highlight(True)`` is called while files are dragged over the widget, ``drop_highlight(False)`` when the
    drag leaves or drops.
    """

    def paths_dropped(self, paths: list[Path]) -> None:
        raise NotImplementedError

    def drop_highlight(self, on: bool) -> None:
        """Show (or hide) that a drop here would add the dragged files; nothing by default."""

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if local_paths(event.mimeData()):
            event.acceptProposedAction()
            self.drop_highlight(True)
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dragLeaveEvent(self, _event: QDragLeaveEvent) -> None:
        self.drop_highlight(False)

    def dropEvent(self, event: QDropEvent) -> None:
        self.drop_highlight(False)
        paths = local_paths(event.mimeData())
        if paths:
            event.acceptProposedAction()
            self.paths_dropped(paths)


class BadgeDelegate(QStyledItemDelegate):
    """Thumbnail, name, and a coloured status badge (with a progress bar while protecting)."""

    def sizeHint(self, _option: QStyleOptionViewItem, _index: QModelIndex) -> QSize:
        return TILE

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        painter.save()
        palette = option.palette
        rect = option.rect.adjusted(4, 4, -4, -4)
        selected = bool(option.state & QStyle.StateFlag.State_Selected)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(palette.color(palette.ColorRole.Highlight) if selected else Qt.PenStyle.NoPen)
        painter.setBrush(palette.color(palette.ColorRole.AlternateBase))
        painter.drawRoundedRect(rect, 6, 6)
        thumb_area = QRect(rect.left() + 6, rect.top() + 6, rect.width() - 12, rect.height() - 52)
        pixmap = index.data(THUMB_ROLE)
        if isinstance(pixmap, QPixmap) and not pixmap.isNull():
            scaled = pixmap.scaled(
                thumb_area.size(), Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
            )
            x = thumb_area.left() + (thumb_area.width() - scaled.width()) // 2
            y = thumb_area.top() + (thumb_area.height() - scaled.height()) // 2
            painter.drawPixmap(x, y, scaled)
        else:
            painter.setPen(palette.color(palette.ColorRole.PlaceholderText))
            status = index.data(STATUS_ROLE)
            painter.drawText(thumb_area, Qt.AlignmentFlag.AlignCenter, "no preview" if status == ERROR else "…")
        name = index.data(Qt.ItemDataRole.DisplayRole) or ""
        painter.setPen(palette.color(palette.ColorRole.Text))
        name_rect = QRect(rect.left() + 6, rect.bottom() - 44, rect.width() - 12, 18)
        painter.drawText(
            name_rect,
            Qt.AlignmentFlag.AlignCenter,
            painter.fontMetrics().elidedText(name, Qt.TextElideMode.ElideMiddle, name_rect.width()),
        )
        status = index.data(STATUS_ROLE) or QUEUED
        progress = float(index.data(PROGRESS_ROLE) or 0.0)
        badge = QRect(rect.left() + 6, rect.bottom() - 24, rect.width() - 12, 18)
        colour = BADGE_COLOURS.get(status, QColor(120, 120, 120))
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(colour.darker(170))
        painter.drawRoundedRect(badge, 9, 9)
        fill = (
            badge
            if status != PROTECTING
            else QRect(badge.left(), badge.top(), int(badge.width() * progress), badge.height())
        )
        if fill.width() > 0:
            painter.setBrush(colour)
            painter.drawRoundedRect(fill, 9, 9)
        text = status if status != PROTECTING else f"protecting {progress:.0%}"
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(badge, Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()


class AlbumStrip(PathDropTarget, QListWidget):
    """Horizontal strip of the album's photos; accepts drops like the rest of the window.

    ``removeRequested(keys)`` on Delete or Backspace, ``menuRequested(key, global_pos)`` on a right click (or the
    menu key) over a photo, ``dropHighlight(on)`` while files are dragged over it.
    """

    pathsDropped = Signal(list)
    removeRequested = Signal(list)
    menuRequested = Signal(str, QPoint)
    dropHighlight = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("album")
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListView.Movement.Static)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setUniformItemSizes(True)
        self.setSpacing(2)
        self.setItemDelegate(BadgeDelegate(self))
        self.setFixedHeight(TILE.height() + 26)
        self.setHorizontalScrollMode(QListView.ScrollMode.ScrollPerPixel)
        self.setAcceptDrops(True)
        self.setDragEnabled(False)
        self.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.customContextMenuRequested.connect(self._menu_at)
        self.setToolTip(
            "The album: click a photo (or use the arrow keys) to preview it; Delete removes it; "
            "right-click for more; hover an error badge for the reason"
        )
        self._items: dict[str, QListWidgetItem] = {}

    def add_entry(self, entry: PhotoEntry) -> QListWidgetItem:
        item = QListWidgetItem(entry.name)
        item.setData(KEY_ROLE, entry.key)
        self.addItem(item)
        self._items[entry.key] = item
        self.update_entry(entry)
        return item

    def item_for(self, key: str) -> QListWidgetItem | None:
        return self._items.get(key)

    def keys(self) -> list[str]:
        return [self.item(row).data(KEY_ROLE) for row in range(self.count())]

    def selected_keys(self) -> list[str]:
        """The photos the album's actions apply to: the current one (none when the album is empty)."""
        current = self.currentItem()
        return [current.data(KEY_ROLE)] if current is not None else []

    def update_entry(self, entry: PhotoEntry) -> None:
        item = self._items.get(entry.key)
        if item is None:
            return
        measuring = entry.status == PROTECTING and entry.message == MEASURING
        item.setData(STATUS_ROLE, "measuring" if measuring else entry.status)
        item.setData(PROGRESS_ROLE, entry.progress)
        if entry.thumbnail is not None and item.data(THUMB_ROLE) is None:
            item.setData(THUMB_ROLE, QPixmap.fromImage(to_qimage(entry.thumbnail)))
        tip = f"{entry.path}\n{entry.status}"
        if entry.faces is not None:
            tip += f" · {sum(entry.enabled)} of {len(entry.faces)} face(s) selected"
        if entry.message:
            tip += f"\n{entry.message}"
        item.setToolTip(tip)

    def remove_entry(self, key: str) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self.takeItem(self.row(item))

    def clear_album(self) -> None:
        self.clear()
        self._items.clear()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Delete, Qt.Key.Key_Backspace) and self.selected_keys():
            self.removeRequested.emit(self.selected_keys())
            event.accept()
            return
        super().keyPressEvent(event)

    def _menu_at(self, pos: QPoint) -> None:
        item = self.itemAt(pos) or self.currentItem()
        if item is not None:
            self.setCurrentItem(item)
            self.menuRequested.emit(item.data(KEY_ROLE), self.viewport().mapToGlobal(pos))

    def paths_dropped(self, paths: list[Path]) -> None:
        self.pathsDropped.emit(paths)

    def drop_highlight(self, on: bool) -> None:
        self.dropHighlight.emit(on)


class DropZone(QWidget):
    """What an empty window shows: where to drop, and the shortcut to open instead."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("dropzone")
        layout = QVBoxLayout(self)
        layout.addStretch(1)
        title = QLabel("Drop photos or folders here")
        title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        font = title.font()
        font.setPointSizeF(font.pointSizeF() * 1.8)
        font.setBold(True)
        title.setFont(font)
        hint = QLabel(
            "or use File ▸ Open (Ctrl+O). Folders are searched recursively.\n"
            "FaceCloak finds every face, adds a small change that confuses face recognition, and measures\n"
            "how well it worked on models the change was never computed against. Nothing leaves this computer."
        )
        hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        hint.setWordWrap(True)
        layout.addWidget(title)
        layout.addSpacing(12)
        layout.addWidget(hint)
        layout.addStretch(1)

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        colour = self.palette().color(self.palette().ColorRole.Mid)
        pen = painter.pen()
        pen.setColor(colour)
        pen.setWidth(3)
        pen.setStyle(Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.drawRoundedRect(self.rect().adjusted(24, 24, -24, -24), 18, 18)


class DropOverlay(QWidget):
    """Drawn over the window while files are dragged over it: an accent frame and what dropping does."""

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setObjectName("dropOverlay")
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.hide()

    def paintEvent(self, _event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        accent = self.palette().color(self.palette().ColorRole.Highlight)
        fill = QColor(accent)
        fill.setAlpha(40)
        painter.setBrush(fill)
        painter.setPen(QPen(accent, 3))
        painter.drawRoundedRect(self.rect().adjusted(6, 6, -6, -6), 14, 14)
        font = painter.font()
        font.setPointSizeF(font.pointSizeF() * 1.6)
        font.setBold(True)
        painter.setFont(font)
        text = "Drop to add these photos and folders to the album"
        box = painter.fontMetrics().boundingRect(text).adjusted(-18, -12, 18, 12)
        box.moveCenter(self.rect().center())
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(accent)
        painter.drawRoundedRect(box, 10, 10)
        painter.setPen(QColor(255, 255, 255))
        painter.drawText(box, Qt.AlignmentFlag.AlignCenter, text)
