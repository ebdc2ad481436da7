# Regenerate (from the repository root, with the models built):
#   [THEME=dark|light] [PRESET=mid] [STEPS=N] [ENSEMBLE=a,b,...] [EVALUATORS=a,b,...] \
#   xvfb-run -a -s "-screen 0 1400x900x24" python docs/screenshots/capture.py docs/screenshots
"""Drive the real FaceCloak window under Xvfb through a protect run and capture its main states.

The album is made from scikit-image's sample pictures (public domain): one face, a cat, a cup of coffee, and a
file that is not a photo. Each state is waited for, not timed: the protecting shot is taken during the report.
"""

import os
import sys
import time
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QCoreApplication, QEventLoop, QPointF, QSettings, QTimer
from PySide6.QtWidgets import QApplication
from skimage import data

OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)
WORK = Path("/tmp/facecloak-shots")
album = WORK / "album"
(album / "holiday").mkdir(parents=True, exist_ok=True)
Image.fromarray(data.astronaut()).save(album / "holiday" / "astronaut.jpg", quality=95)
Image.fromarray(data.chelsea()).save(album / "holiday" / "chelsea.jpg", quality=95)
Image.fromarray(data.coffee()).save(album / "coffee.jpg", quality=95)
(album / "notes.jpg").write_bytes(b"not a photo")
outdir = WORK / "protected"
outdir.mkdir(exist_ok=True)
for old in outdir.iterdir():
    old.unlink()

QCoreApplication.setOrganizationName("FaceCloak")
QCoreApplication.setApplicationName("FaceCloak")
app = QApplication(sys.argv)
from facecloak.app.first_run import app_icon  # noqa: E402 - after QApplication
from facecloak.app.run_state import Stage  # noqa: E402
from facecloak.app.window import MainWindow, install_error_hook  # noqa: E402
from facecloak.core.zoo.manifest import Roles  # noqa: E402

app.setWindowIcon(app_icon())
ini = WORK / "settings.ini"
ini.unlink(missing_ok=True)
settings = QSettings(str(ini), QSettings.Format.IniFormat)
settings.setValue("window/theme", os.environ.get("THEME", "dark"))
w = MainWindow(settings)
install_error_hook(w)
w.resize(1360, 860)
w.show()


def spin(ms: int) -> None:
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def until(cond, timeout: float = 300) -> None:
    start = time.time()
    while not cond():
        spin(50)
        if time.time() - start > timeout:
            raise TimeoutError


def shot(name: str, widget=None) -> None:
    spin(300)
    (widget or w).grab().save(str(OUT / name))
    print("saved", name, flush=True)


spin(800)
shot("01-empty.png")
panel = w.settings_panel
panel.preset.setCurrentText(os.environ.get("PRESET", "mid"))
if os.environ.get("STEPS") or os.environ.get("ENSEMBLE"):
    panel.expert.setChecked(True)
    if os.environ.get("STEPS"):
        panel.steps.setValue(int(os.environ["STEPS"]))
    chosen = os.environ["ENSEMBLE"].split(",") if os.environ.get("ENSEMBLE") else list(Roles.load().ensemble)
    for name, box in panel.ensemble_boxes.items():
        box.setChecked(name in chosen)
panel.measure.setChecked(True)
panel.output_dir.setText(str(outdir))
if os.environ.get("EVALUATORS"):  # default: the manifest's held-out evaluators
    settings.setValue("run/evaluators", os.environ["EVALUATORS"].split(","))
w.add_paths([album])
until(lambda: all(e.faces is not None or e.status == "error" for e in w.entries.values()))
key = str(album / "holiday" / "astronaut.jpg")
w.album.setCurrentItem(w.album.item_for(key))
w.tabs.setCurrentWidget(w.settings_panel)
shot("02-album.png")
w.tabs.setCurrentIndex(0)  # the report tab
w.protect_all()
until(lambda: w.run is not None and w.run.stage == Stage.REPORT, 600)
spin(1500)  # the report's own progress moves on
shot("03-protecting.png")
until(lambda: w.mode == "idle", 900)
w.album.setCurrentItem(w.album.item_for(key))
w.preview.divider = 0.45
w.preview.update()
shot("04-before-after-report.png")
w.set_view_mode("difference")
shot("05-difference.png")
w.set_view_mode("side")
shot("06-side-by-side.png")
w.set_view_mode("split")
x0, y0, x1, y1 = w.entries[key].faces[0].box
w.preview.zoom_actual()  # 100%, then 3x around the face: the change at pixel level on each side of the divider
w.preview.center = QPointF((x0 + x1) / 2 / w.preview.before.width(), (y0 + y1) / 2 / w.preview.before.height())
w.preview.set_zoom(3 / w.preview.devicePixelRatioF())
w.preview.divider = (x0 + x1) / 2 / w.preview.before.width()
shot("07-zoom.png")
w.show_about()
spin(300)
shot("08-about.png", w.about_box)
w.about_box.close()
w.set_theme("light" if os.environ.get("THEME", "dark") == "dark" else "dark")  # the other look (View > Theme)
w.preview.zoom_fit()
shot("09-other-look.png")
print({k: (e.status, e.message, round(e.seconds, 1)) for k, e in w.entries.items()}, flush=True)
w.shutdown()
w.close()
