"""A fast fake engine for the app's tests (no models): the detector, the ensemble's models, the attack loop and
the evaluator's models are replaced; the window, the worker thread, the run control, the protector's pipeline and the
real exporter are the app's own. Fixtures over it (``engine``, ``photos``, ``out_dir``) are in conftest.py."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image
from PySide6.QtCore import QSettings

from facecloak.app.window import MainWindow
from facecloak.app.worker import Worker
from facecloak.core.attack import CloakCancelled
from facecloak.core.detect import Face
from facecloak.core.report import ProtectionReport

NAMES = ("a", "b", "c", "d")
ENSEMBLE = "facesdk_mbf"  # the fastest model of the default ensemble
FACE = Face(
    box=(16.0, 16.0, 80.0, 80.0),
    score=0.99,
    landmarks=((36.0, 40.0), (60.0, 40.0), (48.0, 52.0), (38.0, 64.0), (58.0, 64.0)),
)


class FakeDetector:
    def detect(self, _photo) -> list[Face]:
        return [FACE]


class FakeCloak:
    """The attack's contract: ``steps`` steps, progress after each, the cancel flag polled before each."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.memory = None  # the album memory a protector carries from one attack to the next
        self.lpips = None

    def __call__(self, photo, faces, progress=None, should_cancel=None, init=None):
        engine = self.engine
        engine.cloak_calls += 1
        if engine.on_cloak is not None:
            engine.on_cloak(engine.cloak_calls)
        for step in range(1, engine.steps + 1):
            if should_cancel is not None and should_cancel():
                raise CloakCancelled("cancelled")
            time.sleep(engine.step_s)
            if progress is not None:
                progress(step, engine.steps, 0.0)
        return SimpleNamespace(photo=(photo * 0.9 + 0.05).clamp(0, 1), face_dssim=[0.01], steps=[None] * engine.steps)


class FakeModel:
    """A held-out model whose forward pass takes ``seconds`` per call."""

    name = "fake_evaluator"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        time.sleep(self.seconds)
        return torch.zeros(len(crops), 4)


def fake_evaluator_class(engine: FakeEngine) -> type:
    class FakeEvaluator:
        """The real evaluator's shape: its report is batched forward passes of ``self.models``."""

        def __init__(self, evaluators=None, device: str = "auto") -> None:
            self.models = [FakeModel(engine.pass_s)]
            self.missing: list[str] = []

        def report(
            self, clean, protected, faces, ensemble, *, should_cancel=None, export_file=None, **_kw
        ) -> ProtectionReport:
            engine.measured.append((protected, export_file))
            crops = torch.zeros(25, 3, 8, 8)  # one face's crops after the report's degradations
            for _ in range(engine.report_passes):
                for model in self.models:  # the real evaluator polls should_cancel before each forward pass
                    if should_cancel is not None and should_cancel():
                        raise CloakCancelled("the report was cancelled")
                    model(crops)
            return ProtectionReport([m.name for m in self.models], list(ensemble), ["none"], [], {})

    return FakeEvaluator


class FakeEngine:
    def __init__(self) -> None:
        self.steps = 3
        self.step_s = 0.01
        self.report_passes = 1
        self.pass_s = 0.01
        self.cloak_calls = 0
        self.on_cloak = None  # called with the call number as each photo's attack starts
        self.measured: list[tuple[object, Path | None]] = []  # (pixels measured, export_file) per report


def install_fakes(engine: FakeEngine, patch: Callable[[object, str, object], None]) -> None:
    """Put the fakes in place of the slow parts with ``patch(owner, name, value)`` (``monkeypatch.setattr``).

    The protector itself is real: it loads its models through ``load_model`` and attacks with ``Cloak``, both
    replaced here, and finds faces with the worker's detector.
    """
    from facecloak.core import attack, protect, report

    def fake_cloak(_models, _config, lpips=None) -> FakeCloak:
        return FakeCloak(engine)

    patch(Worker, "_get_detector", lambda self: FakeDetector())
    patch(protect, "FaceDetector", lambda *_args, **_kw: FakeDetector())
    patch(protect, "load_model", lambda name, device=None: SimpleNamespace(name=name))
    patch(protect, "Cloak", fake_cloak)
    patch(attack, "Cloak", fake_cloak)
    patch(report, "ProtectionEvaluator", fake_evaluator_class(engine))


def make_photos(folder: Path) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for name in NAMES:
        path = folder / f"{name}.jpg"
        Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


@contextmanager
def open_window(qtbot, tmp_path: Path, photos: list[Path], out_dir: Path, measure: bool) -> Iterator[MainWindow]:
    """A shown window with ``photos`` added and their faces found, writing to ``out_dir``; closed afterwards."""
    win = MainWindow(QSettings(str(tmp_path / "facecloak.ini"), QSettings.Format.IniFormat))
    win.settings_panel.output_dir.setText(str(out_dir))
    win.settings_panel.measure.setChecked(measure)
    win.show()
    win.add_paths(photos)
    qtbot.waitUntil(lambda: all(e.faces is not None for e in win.entries.values()), timeout=20000)
    yield win
    win.ask_quit = lambda _question: True  # never leave a modal question open at teardown
    win.close()
