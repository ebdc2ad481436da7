"""The settings panel: preset, expert knobs, device, output; persisted with QSettings."""

from __future__ import annotations

from PySide6.QtCore import QSettings, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from facecloak.core.attack import PRESETS, preset
from facecloak.core.device import device_label

from .model import PRESET_NAMES, RunSettings

_PRESET_WORDS = {
    "low": "the least visible change; weakest protection",
    "mid": "balanced",
    "high": "strongest protection; the change can be visible on close inspection",
}


def _preset_help(name: str) -> str:
    """The preset in words, with its steps (on a CUDA GPU too, where they differ) and budget."""
    steps, gpu_steps = PRESETS[name].steps, preset(name, gpu=True).steps
    effort = f"{steps} steps" + (f", {gpu_steps} on a GPU" if gpu_steps != steps else "")
    return f"{name}: {_PRESET_WORDS[name]} ({effort}, face DSSIM <= {PRESETS[name].dssim_budget})"


# numbers from the engine's own presets, so the help never drifts from what runs
PRESET_HELP = {name: _preset_help(name) for name in PRESET_NAMES}


class SettingsPanel(QWidget):
    changed = Signal()

    def __init__(
        self,
        settings: QSettings,
        models: dict,
        roles: dict[str, list[str]],
        devices: list[str],
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("settings")
        self.store = settings
        self.roles = roles
        outer = QVBoxLayout(self)

        basic = QGroupBox("Protection")
        form = QFormLayout(basic)
        self.preset = QComboBox()
        self.preset.addItems(PRESET_NAMES)
        self.preset.setToolTip("\n".join(PRESET_HELP.values()))
        form.addRow("Preset", self.preset)
        self.device = QComboBox()
        labels = {name: device_label(name) for name in devices}  # e.g. "NVIDIA H200 (CUDA, 140 GB)"
        self.device.addItem(f"auto: {labels[devices[0]]}", "auto")
        for name in ("cpu", "cuda", "mps"):
            self.device.addItem(f"{name}: {labels[name]}" if name in labels else f"{name} (not found)", name)
            if name not in devices:
                self.device.model().item(self.device.count() - 1).setEnabled(False)
        self.device.setToolTip(
            "Where the attack and the report run; a GPU is much faster. Found here: " + ", ".join(labels.values())
        )
        form.addRow("Device", self.device)
        self.measure = QCheckBox("Measure protection (report)")
        self.measure.setToolTip("After protecting, test the photo on held-out recognisers the change never saw")
        form.addRow(self.measure)
        outer.addWidget(basic)

        expert = QGroupBox("Expert")
        expert.setCheckable(True)
        expert.setToolTip("Override the preset")
        self.expert = expert
        eform = QFormLayout(expert)
        self.steps = QSpinBox()
        self.steps.setRange(0, 500)
        self.steps.setSpecialValueText("preset")
        self.steps.setToolTip("Optimisation steps per photo (0 = the preset's); more is stronger and slower")
        eform.addRow("Steps", self.steps)
        self.budget = QDoubleSpinBox()
        self.budget.setDecimals(4)
        self.budget.setRange(0.0, 0.05)
        self.budget.setSingleStep(0.001)
        self.budget.setSpecialValueText("preset")
        self.budget.setToolTip("Largest structural change (DSSIM) allowed on each face (0 = the preset's)")
        eform.addRow("DSSIM budget", self.budget)
        self.ensemble_boxes: dict[str, QCheckBox] = {}
        ens = QWidget()
        ens_layout = QVBoxLayout(ens)
        ens_layout.setContentsMargins(0, 0, 0, 0)
        for name in roles.get("ensemble", []):
            spec = models.get(name)
            full = spec.display_name if spec else name
            # the name without its parenthesised provenance, so the rows fit the panel; the tooltip has it all
            box = QCheckBox(full.split(" (")[0])
            box.setToolTip(f"{full} [{name}]: attack this model (held-out models are kept for the report)")
            self.ensemble_boxes[name] = box
            ens_layout.addWidget(box)
        eform.addRow("Ensemble", ens)
        self.blur = QCheckBox("blur")
        self.jpeg = QCheckBox("JPEG")
        self.resize = QCheckBox("resize")
        robust = QWidget()
        rl = QHBoxLayout(robust)
        rl.setContentsMargins(0, 0, 0, 0)
        for box in (self.blur, self.jpeg, self.resize):
            box.setToolTip("Make the change survive this degradation (uploads blur, recompress and resize)")
            rl.addWidget(box)
        eform.addRow("Robust to", robust)
        outer.addWidget(expert)

        out = QGroupBox("Output")
        oform = QFormLayout(out)
        folder_row = QWidget()
        fl = QHBoxLayout(folder_row)
        fl.setContentsMargins(0, 0, 0, 0)
        self.output_dir = QLineEdit()
        self.output_dir.setPlaceholderText("next to each photo")
        self.output_dir.setToolTip("Where protected copies are written as soon as each photo is done")
        browse = QPushButton("…")
        browse.setToolTip("Choose the output folder")
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse)
        fl.addWidget(self.output_dir)
        fl.addWidget(browse)
        oform.addRow("Folder", folder_row)
        self.naming = QComboBox()
        self.naming.addItem("add a suffix", "suffix")
        self.naming.addItem("same name (other folder)", "same")
        self.naming.setToolTip("How protected copies are named; originals are never replaced")
        oform.addRow("Naming", self.naming)
        self.suffix = QLineEdit()
        self.suffix.setToolTip("Added to the file name: photo.jpg -> photo_cloaked.jpg")
        oform.addRow("Suffix", self.suffix)
        self.format = QComboBox()
        self.format.addItem("same as input", "same")
        self.format.addItem("JPEG", "jpeg")
        self.format.addItem("PNG (lossless)", "png")
        self.format.setToolTip("File format of the protected copies; PNG keeps every pixel of the change")
        oform.addRow("Format", self.format)
        self.quality = QSpinBox()
        self.quality.setRange(0, 100)
        self.quality.setSpecialValueText("like the original")
        self.quality.setToolTip("JPEG quality (0 = estimated from the original photo)")
        oform.addRow("JPEG quality", self.quality)
        self.strip = QCheckBox("Strip identifying metadata (GPS, camera, dates)")
        self.strip.setToolTip("On by default: metadata can identify you as well as your face")
        oform.addRow(self.strip)
        self.overwrite = QCheckBox("Replace existing protected copies")
        self.overwrite.setToolTip(
            "Off: FaceCloak asks before replacing a file with the protected copy's name. Originals are never replaced."
        )
        oform.addRow(self.overwrite)
        self.save_report = QCheckBox("Save the report (JSON + PNG) next to each photo")
        self.save_report.setToolTip("Write each photo's protection report beside its protected copy")
        oform.addRow(self.save_report)
        outer.addWidget(out)
        self.note = QLabel()
        self.note.setWordWrap(True)
        outer.addWidget(self.note)
        outer.addStretch(1)

        self.load()
        for widget in (self.preset, self.device, self.naming, self.format):
            widget.currentIndexChanged.connect(self._changed)
        for widget in (self.steps, self.quality):
            widget.valueChanged.connect(self._changed)
        self.budget.valueChanged.connect(self._changed)
        for widget in (self.output_dir, self.suffix):
            widget.textChanged.connect(self._changed)
        for box in (self.measure, self.blur, self.jpeg, self.resize, self.strip, self.overwrite, self.save_report):
            box.toggled.connect(self._changed)
        for box in self.ensemble_boxes.values():
            box.toggled.connect(self._changed)
        expert.toggled.connect(self._changed)
        self._update_note()

    def set_model_states(self, states: dict[str, tuple[bool, str]]) -> None:
        """Grey out ensemble models that are not converted, with the reason in the tooltip."""
        for name, box in self.ensemble_boxes.items():
            ready, message = states.get(name, (False, "unknown"))
            box.setEnabled(ready)
            if not ready:
                box.setChecked(False)
                box.setToolTip(f"{name}: {message}")

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Output folder", self.output_dir.text())
        if folder:
            self.output_dir.setText(folder)

    def _changed(self, *_args) -> None:
        self._update_note()
        self.save()
        self.changed.emit()

    def _update_note(self) -> None:
        self.suffix.setEnabled(self.naming.currentData() == "suffix")
        self.quality.setEnabled(self.format.currentData() != "png")
        problem = self.current().problem()
        self.note.setText(
            f"<span style='color:#d05050'>{problem}</span>" if problem else PRESET_HELP[self.preset.currentText()]
        )

    # -- values --------------------------------------------------------------------------------
    def current(self) -> RunSettings:
        expert = self.expert.isChecked()
        ensemble = tuple(n for n, b in self.ensemble_boxes.items() if b.isChecked() and b.isEnabled())
        return RunSettings(
            preset=self.preset.currentText(),
            steps=(self.steps.value() or None) if expert else None,
            dssim_budget=(self.budget.value() or None) if expert else None,
            ensemble=ensemble if expert else (),
            blur=self.blur.isChecked() or not expert,
            jpeg=self.jpeg.isChecked() or not expert,
            resize=self.resize.isChecked() or not expert,
            device=self.device.currentData(),
            output_dir=self.output_dir.text().strip(),
            naming=self.naming.currentData(),
            suffix=self.suffix.text(),
            format=self.format.currentData(),
            jpeg_quality=self.quality.value(),
            strip_metadata=self.strip.isChecked(),
            overwrite=self.overwrite.isChecked(),
            measure=self.measure.isChecked(),
            save_report=self.save_report.isChecked(),
            evaluators=tuple(self.store.value("run/evaluators", [], type=list) or ()),
        )

    def load(self) -> None:
        s, d = self.store, RunSettings()

        def boolean(key: str, default: bool) -> bool:
            return str(s.value(key, default)).lower() in ("true", "1")

        self.preset.setCurrentText(str(s.value("run/preset", d.preset)))
        index = self.device.findData(str(s.value("run/device", d.device)))
        self.device.setCurrentIndex(max(0, index))
        self.measure.setChecked(boolean("run/measure", d.measure))
        self.expert.setChecked(boolean("run/expert", False))
        self.steps.setValue(int(s.value("run/steps", 0)))
        self.budget.setValue(float(s.value("run/dssim_budget", 0.0)))
        offered = list(self.ensemble_boxes)
        chosen = s.value("run/ensemble", None, type=list) or offered
        if not set(chosen) <= set(offered):
            # saved against an older default ensemble (a model since replaced): that choice no longer means
            # what the user picked, so start again from today's default
            chosen = offered
        for name, box in self.ensemble_boxes.items():
            box.setChecked(name in chosen)
        self.blur.setChecked(boolean("run/blur", d.blur))
        self.jpeg.setChecked(boolean("run/jpeg", d.jpeg))
        self.resize.setChecked(boolean("run/resize", d.resize))
        self.output_dir.setText(str(s.value("out/dir", d.output_dir)))
        self.naming.setCurrentIndex(max(0, self.naming.findData(str(s.value("out/naming", d.naming)))))
        self.suffix.setText(str(s.value("out/suffix", d.suffix)))
        self.format.setCurrentIndex(max(0, self.format.findData(str(s.value("out/format", d.format)))))
        self.quality.setValue(int(s.value("out/jpeg_quality", d.jpeg_quality)))
        self.strip.setChecked(boolean("out/strip_metadata", d.strip_metadata))
        self.overwrite.setChecked(boolean("out/overwrite", d.overwrite))
        self.save_report.setChecked(boolean("out/save_report", d.save_report))

    def save(self) -> None:
        s = self.store
        s.setValue("run/preset", self.preset.currentText())
        s.setValue("run/device", self.device.currentData())
        s.setValue("run/measure", self.measure.isChecked())
        s.setValue("run/expert", self.expert.isChecked())
        s.setValue("run/steps", self.steps.value())
        s.setValue("run/dssim_budget", self.budget.value())
        s.setValue("run/ensemble", [n for n, b in self.ensemble_boxes.items() if b.isChecked()])
        s.setValue("run/blur", self.blur.isChecked())
        s.setValue("run/jpeg", self.jpeg.isChecked())
        s.setValue("run/resize", self.resize.isChecked())
        s.setValue("out/dir", self.output_dir.text())
        s.setValue("out/naming", self.naming.currentData())
        s.setValue("out/suffix", self.suffix.text())
        s.setValue("out/format", self.format.currentData())
        s.setValue("out/jpeg_quality", self.quality.value())
        s.setValue("out/strip_metadata", self.strip.isChecked())
        s.setValue("out/overwrite", self.overwrite.isChecked())
        s.setValue("out/save_report", self.save_report.isChecked())
