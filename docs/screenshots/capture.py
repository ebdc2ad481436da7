# Regenerate (from the repository root):
#   PRESET=mid [STEPS=N] [ENSEMBLE=a,b,...] \
#   xvfb-run -a -s "-screen 0 1400x900x24" python docs/screenshots/capture.py /tmp/shots
"""Drive the real FaceCloak window under Xvfb and capture its main states."""

import os
import sys
import time
from pathlib import Path

from PIL import Image
from PySide6.QtCore import QCoreApplication, QEventLoop, QSettings, QTimer
from PySide6.QtWidgets import QApplication
from skimage import data

OUT = Path(sys.argv[1])
OUT.mkdir(parents=True, exist_ok=True)
work = Path("/tmp/facecloak-shots/album")
(work / "holiday").mkdir(parents=True, exist_ok=True)
Image.fromarray(data.astronaut()).save(work / "holiday" / "astronaut.jpg", quality=95)
Image.fromarray(data.chelsea()).save(work / "holiday" / "chelsea.jpg", quality=95)
Image.fromarray(data.coffee()).save(work / "coffee.jpg", quality=95)
(work / "notes.jpg").write_bytes(b"not a photo")
outdir = Path("/tmp/facecloak-shots/protected")
outdir.mkdir(exist_ok=True)
for p in outdir.iterdir():
    p.unlink()

QCoreApplication.setOrganizationName("FaceCloak")
QCoreApplication.setApplicationName("FaceCloak")
app = QApplication(sys.argv)
from facecloak.app.window import MainWindow, install_error_hook  # noqa: E402 - after QApplication
from facecloak.core.protect import default_ensemble  # noqa: E402

ini = Path("/tmp/facecloak-shots/settings.ini")
ini.unlink(missing_ok=True)
settings = QSettings(str(ini), QSettings.Format.IniFormat)
w = MainWindow(settings)
install_error_hook(w)
w.resize(1360, 860)
w.show()


def spin(ms):
    loop = QEventLoop()
    QTimer.singleShot(ms, loop.quit)
    loop.exec()


def until(cond, timeout=300):
    t = time.time()
    while not cond():
        spin(100)
        if time.time() - t > timeout:
            raise TimeoutError


spin(800)
w.grab().save(str(OUT / "01-empty.png"))
p = w.settings_panel
p.expert.setChecked(True)
if os.environ.get("STEPS"):  # default: the preset's own
    p.steps.setValue(int(os.environ["STEPS"]))
ens = os.environ["ENSEMBLE"].split(",") if os.environ.get("ENSEMBLE") else default_ensemble()
for n, b in p.ensemble_boxes.items():
    b.setChecked(n in ens)
p.preset.setCurrentText(os.environ.get("PRESET", "mid"))
p.output_dir.setText(str(outdir))
if os.environ.get("EVALUATORS"):  # default: the manifest's held-out evaluators
    settings.setValue("run/evaluators", os.environ["EVALUATORS"].split(","))
w.add_paths([work])
until(lambda: all(e.faces is not None or e.status == "error" for e in w.entries.values()))
w.album.setCurrentItem(w.album.item_for(str(work / "holiday" / "astronaut.jpg")))
w.tabs.setCurrentWidget(w.settings_panel)
spin(500)
w.grab().save(str(OUT / "02-album.png"))
w.protect_all()
key = str(work / "holiday" / "astronaut.jpg")
until(lambda: w.entries[key].progress > 0.4)
spin(200)
w.grab().save(str(OUT / "03-protecting.png"))
until(lambda: w.mode == "idle", 600)
w.album.setCurrentItem(w.album.item_for(key))
w.tabs.setCurrentWidget(w.report_panel)
w.preview.divider = 0.45
w.preview.update()
spin(500)
w.grab().save(str(OUT / "04-before-after-report.png"))
w.set_view_mode("difference")
spin(300)
w.grab().save(str(OUT / "05-difference.png"))
w.set_view_mode("side")
spin(300)
w.grab().save(str(OUT / "06-side-by-side.png"))
w.set_view_mode("split")
w.preview.zoom_actual()
spin(300)
w.grab().save(str(OUT / "07-zoom-100.png"))
w.show_about()
spin(500)
w.about_box.grab().save(str(OUT / "08-about.png"))
print({k: (e.status, e.message) for k, e in w.entries.items()})
w.shutdown()
w.close()
