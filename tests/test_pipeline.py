"""The one pipeline from a photo file to its protected copy and report (``facecloak.core.protect``).

Fast tests run the real pipeline (decoding, target checks, the atomic write, outcomes) around a fake attack; the
last one runs the real models and checks that the app and the command line write the same protected copy.
"""

from __future__ import annotations

import pickle
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from facecloak.core import export as export_module
from facecloak.core import image as image_module
from facecloak.core.attack import Cloak, CloakCancelled, CloakConfig, preset, with_overrides
from facecloak.core.export import ExportError, ExportOptions, export_target, write_protected
from facecloak.core.image import open_photo, pil_to_tensor
from facecloak.core.protect import Protector, Status, build_config, measure

FACE = SimpleNamespace(box=(0.0, 0.0, 8.0, 8.0), score=1.0)


class FakeDetector:
    def __init__(self) -> None:
        self.calls = 0

    def detect(self, photo: torch.Tensor) -> list:
        self.calls += 1
        return [FACE] if float(photo.max()) > 0.2 else []


class FakeCloak:
    """The attack's contract (progress after each step, the cancel flag polled before each); darkens the photo."""

    def __init__(self, steps: int = 3) -> None:
        self.steps = steps
        self.calls: list[list] = []
        self.on_call = None

    def __call__(self, photo, faces, progress=None, should_cancel=None, init=None):
        self.calls.append(list(faces))
        if self.on_call is not None:
            self.on_call()
        for step in range(1, self.steps + 1):
            if should_cancel is not None and should_cancel():
                raise CloakCancelled("cancelled")
            if progress is not None:
                progress(step, self.steps, 0.0)
        return SimpleNamespace(photo=photo * 0.5, face_dssim=[0.01] * len(faces), steps=[None] * self.steps)


class FakeProtector(Protector):
    """The real pipeline around the fake detector and attack: no model is loaded."""

    def __init__(self) -> None:
        self.device = torch.device("cpu")
        self.config = preset("mid")
        self.ensemble_names = ["fake"]
        self.models = []
        self.detector = FakeDetector()
        self.cloak = FakeCloak()


def photo(path: Path, seed: int = 0, face: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(60, 255, (48, 64, 3), dtype=np.uint8) if face else np.zeros((48, 64, 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def pixels(path: Path) -> np.ndarray:
    return np.asarray(open_photo(path).rgb)


@pytest.fixture
def protector() -> FakeProtector:
    return FakeProtector()


@pytest.fixture
def decodes(monkeypatch) -> list[Path]:
    """Every photo decoded, by any module."""
    seen: list[Path] = []
    real = image_module._open_photo

    def counting(path: Path):
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(image_module, "_open_photo", counting)
    return seen


# -- the config builder -------------------------------------------------------------------------------------------


def test_the_config_builder_applies_the_preset_then_each_override_and_the_expert_knobs_last():
    config = build_config(
        "high", steps=5, dssim_budget=0.003, robustness={"jpeg": False}, knobs={"steps": 7, "views_per_step": 1}
    )
    high = preset("high")
    assert (config.steps, config.views_per_step, config.dssim_budget) == (7, 1, 0.003)  # the knob wins over steps
    assert config.epsilon == high.epsilon and config.chroma_epsilon == high.chroma_epsilon
    assert not config.robustness.jpeg and config.robustness.blur and config.robustness.resize
    assert build_config("low") == preset("low")
    # what the command line and bench tune built before: the preset, then the knobs
    assert build_config("mid", knobs={"robustness": {"blur": False}}, device="cpu") == with_overrides(
        preset("mid"), {"robustness": {"blur": False}}
    )


def test_on_a_gpu_the_builder_takes_the_gpu_preset_and_an_explicit_steps_still_wins():
    cpu, gpu = build_config("mid", device="cpu"), build_config("mid", device="cuda")
    assert (cpu.steps, gpu.steps) == (15, 30)  # the GPU's cheap steps go to mid's effort
    assert replace(gpu, steps=cpu.steps) == cpu  # and to nothing else
    assert build_config("mid", steps=12, device="cuda").steps == 12
    assert build_config("mid", knobs={"steps": 9}, device=torch.device("cuda")).steps == 9
    assert build_config("high", device="cuda") == build_config("high", device="cpu")
    # "auto" is the GPU exactly when the pipeline would pick one
    expected = 30 if torch.cuda.is_available() else 15
    assert build_config("mid", device="auto").steps == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset_name": "extreme"}, "unknown preset"),
        ({"knobs": {"stepz": 3}}, "unknown knob stepz"),
        ({"robustness": {"snow": True}}, "unknown knob robustness.snow"),
        ({"steps": -1}, "steps must be >= 0"),
        ({"dssim_budget": 0.7}, "dssim_budget must be in"),
    ],
)
def test_the_config_builder_names_what_it_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_config(**kwargs)


# -- protect_file -------------------------------------------------------------------------------------------------


def test_a_photo_is_decoded_once_protected_and_written_to_the_target_given(tmp_path, protector, decodes):
    source = photo(tmp_path / "album" / "day1" / "x.png")
    target = export_target(source, tmp_path / "out", ExportOptions(), relative_to=tmp_path / "album")
    started: list[int] = []
    steps: list[int] = []
    outcome = protector.protect_file(
        source, target, ExportOptions(), progress=lambda s, _t, _l: steps.append(s), started=started.append
    )
    assert decodes == [source]  # once, for detection, the attack and the exporter alike
    assert outcome.status is Status.PROTECTED and outcome.output == tmp_path / "out" / "day1" / "x_cloaked.png"
    assert outcome.faces == (FACE,) and outcome.face_dssim == (0.01,) and outcome.message == ""
    assert started == [1] and steps == [1, 2, 3]
    assert outcome.steps == 3 and outcome.device.startswith("CPU")  # the effort that protected it
    original = pixels(source)
    assert np.array_equal(pixels(target), np.round(original * 0.5).astype(np.uint8))  # the attack's pixels
    assert torch.equal(outcome.clean, pil_to_tensor(Image.fromarray(original)))
    assert outcome.protected is not None and outcome.seconds > 0


def test_the_faces_given_are_protected_without_detecting_again(tmp_path, protector):
    source = photo(tmp_path / "x.png")
    other = SimpleNamespace(box=(1.0, 1.0, 9.0, 9.0), score=0.9)
    outcome = protector.protect_file(source, tmp_path / "o" / "x.png", ExportOptions(), faces=[other])
    assert protector.cloak.calls == [[other]] and protector.detector.calls == 0
    assert outcome.faces == (other,)


@pytest.mark.parametrize(
    ("face", "faces", "message"),
    [(False, None, "no face found"), (True, [], "no face selected")],
    ids=["none found", "none selected"],
)
def test_no_face_to_protect_writes_nothing(tmp_path, protector, face, faces, message):
    source = photo(tmp_path / "x.png", face=face)
    outcome = protector.protect_file(source, tmp_path / "o" / "x.png", ExportOptions(), faces=faces)
    assert (outcome.status, outcome.message) == (Status.NO_FACE, message)
    assert protector.cloak.calls == [] and not (tmp_path / "o").exists()


def test_a_target_that_is_the_original_is_refused_before_the_attack(tmp_path, protector, decodes):
    source = photo(tmp_path / "x.png")
    before = source.read_bytes()
    (tmp_path / "link.png").symlink_to(source)
    for target in (source, tmp_path / "sub" / ".." / "x.png", tmp_path / "link.png"):
        outcome = protector.protect_file(source, target, ExportOptions(overwrite=True))
        assert outcome.status is Status.ERROR and "would replace the original" in outcome.message
    assert protector.cloak.calls == [] and decodes == []  # refused before any work
    assert source.read_bytes() == before


def test_an_unreadable_photo_is_an_error_outcome_naming_it(tmp_path, protector):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really")
    outcome = protector.protect_file(broken, tmp_path / "o" / "broken_cloaked.jpg", ExportOptions())
    assert outcome.status is Status.ERROR and outcome.message.startswith("broken.jpg: damaged or truncated JPEG")
    assert protector.cloak.calls == []


def test_a_name_taken_during_the_attack_is_never_overwritten_and_the_pixels_are_kept(tmp_path, protector):
    source = photo(tmp_path / "x.png")
    target = tmp_path / "o" / "x_cloaked.png"
    target.parent.mkdir()
    protector.cloak.on_call = lambda: target.write_bytes(b"another program's file")
    outcome = protector.protect_file(source, target, ExportOptions())
    assert outcome.status is Status.SKIPPED and outcome.output == target and "exists" in outcome.message
    assert target.read_bytes() == b"another program's file"
    assert outcome.protected is not None  # the app keeps them for Export


def test_numbered_writes_beside_a_taken_name(tmp_path, protector):
    source = photo(tmp_path / "x.png")
    target = tmp_path / "o" / "x_cloaked.png"
    target.parent.mkdir()
    target.write_bytes(b"taken")
    outcome = protector.protect_file(source, target, ExportOptions(), numbered=True)
    assert outcome.status is Status.PROTECTED and outcome.output == tmp_path / "o" / "x_cloaked (2).png"
    assert target.read_bytes() == b"taken"


def test_a_copy_that_cannot_be_written_is_an_error_that_keeps_the_pixels(tmp_path, protector, monkeypatch):
    def full_disk(*_args, **_kwargs):
        raise ExportError("x_cloaked.png: disk full, nothing written")

    monkeypatch.setattr(export_module, "write_atomic", full_disk)
    source = photo(tmp_path / "x.png")
    outcome = protector.protect_file(source, tmp_path / "o" / "x_cloaked.png", ExportOptions())
    assert (outcome.status, outcome.message) == (Status.ERROR, "x_cloaked.png: disk full, nothing written")
    assert outcome.output is None and outcome.protected is not None


def test_cancelling_stops_the_attack_and_writes_nothing(tmp_path, protector):
    source = photo(tmp_path / "x.png")
    polls: list[int] = []

    def cancel_on_second_step() -> bool:
        polls.append(1)
        return len(polls) >= 2

    with pytest.raises(CloakCancelled):
        protector.protect_file(source, tmp_path / "o" / "x.png", ExportOptions(), should_cancel=cancel_on_second_step)
    assert not (tmp_path / "o").exists()


def test_a_detached_outcome_is_plain_data(tmp_path, protector):
    source = photo(tmp_path / "x.png")
    outcome = protector.protect_file(source, tmp_path / "o" / "x_cloaked.png", ExportOptions())
    outcome.report = SimpleNamespace(faces=[])
    plain = outcome.detached()
    assert (plain.clean, plain.protected, plain.report) == (None, None, None)
    assert outcome.clean is not None  # the original outcome is left as it was
    again = pickle.loads(pickle.dumps(plain))  # crosses process boundaries (facecloak protect --jobs)
    assert again.status is Status.PROTECTED and again.output == plain.output and again.faces == plain.faces


# -- the report step ----------------------------------------------------------------------------------------------


class FakeEvaluator:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.keywords: list[dict] = []

    def report(self, clean, protected, faces, ensemble, album=(), *, should_cancel=None, export_file=None):
        self.calls.append((clean, protected, faces, list(ensemble), list(album)))
        self.keywords.append({"should_cancel": should_cancel, "export_file": export_file})
        return SimpleNamespace(faces=[SimpleNamespace(clean_embeddings={"judge": torch.ones(2) * len(self.calls)})])


def test_measure_reads_the_copy_as_written_or_the_pixels_in_memory(tmp_path, protector):
    source = photo(tmp_path / "x.jpg")
    outcome = protector.protect_file(source, tmp_path / "o" / "x_cloaked.jpg", ExportOptions(jpeg_quality=60))
    evaluator = FakeEvaluator()
    album: list = []
    stop = lambda: False  # noqa: E731
    first = measure(evaluator, outcome, ["fake"], album=album, should_cancel=stop)
    measure(evaluator, outcome, ["fake"], on_written=False)
    # the written copy's face DSSIM is measured against the original encoded the same way: the file goes along
    assert evaluator.keywords == [
        {"should_cancel": stop, "export_file": outcome.output},
        {"should_cancel": None, "export_file": None},
    ]
    (clean, written, faces, ensemble, before), (_, in_memory, *_rest) = evaluator.calls
    assert clean is outcome.clean and faces == [FACE] and ensemble == ["fake"] and before == []
    assert torch.equal(written, pil_to_tensor(open_photo(outcome.output).rgb))  # after JPEG encoding
    assert in_memory is outcome.protected and not torch.equal(written, in_memory)
    assert album == [first.faces[0].clean_embeddings]  # this photo joins the album for the next ones
    assert first.attack == {"steps": 3, "device": outcome.device}  # the report names the effort behind it
    measure(evaluator, outcome, ["fake"], album=album)
    assert evaluator.calls[-1][4] == [first.faces[0].clean_embeddings]


def test_an_earlier_copy_is_ready_for_its_report_without_being_protected_again(tmp_path, protector):
    source = photo(tmp_path / "x.png")
    done = protector.protect_file(source, tmp_path / "o" / "x_cloaked.png", ExportOptions())
    earlier = protector.earlier_copy(source, done.output)
    assert earlier.status is Status.DONE_EARLIER and earlier.output == done.output and earlier.faces == (FACE,)
    assert torch.equal(earlier.clean, done.clean) and len(protector.cloak.calls) == 1


# -- the protector outlives a run ---------------------------------------------------------------------------------


class TinyModel(torch.nn.Module):
    name = "tiny"

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))


def test_another_config_keeps_the_models_and_the_album_memory(protector):
    protector.models = [TinyModel()]
    protector.config = CloakConfig(lpips_weight=0)
    protector.cloak = Cloak(protector.models, protector.config)
    memory, cloak = protector.cloak.memory, protector.cloak
    protector.configure(CloakConfig(lpips_weight=0))
    assert protector.cloak is cloak  # the same settings: nothing changes
    low = with_overrides(preset("low"), {"lpips_weight": 0})
    protector.configure(low)
    assert protector.config == low and protector.cloak.config == low
    assert protector.cloak.memory is memory and protector.cloak.models == protector.models


# -- numbered names ("keep both") ---------------------------------------------------------------------------------


def test_keep_both_takes_the_first_free_numbered_name_and_never_overwrites(tmp_path):
    source = photo(tmp_path / "x.png")
    original = source.read_bytes()
    loaded = open_photo(source)
    protected = pil_to_tensor(loaded.rgb) * 0.5
    out = tmp_path / "out"
    target = export_target(source, out, ExportOptions())
    assert write_protected(loaded, protected, target, ExportOptions(), numbered=True) == out / "x_cloaked.png"
    (out / "x_cloaked (2).png").write_bytes(b"someone else's")
    assert write_protected(loaded, protected, target, ExportOptions(), numbered=True) == out / "x_cloaked (3).png"
    assert (out / "x_cloaked (2).png").read_bytes() == b"someone else's"
    assert np.array_equal(pixels(out / "x_cloaked (3).png"), pixels(out / "x_cloaked.png"))
    same = ExportOptions(suffix="", same_name=True)
    same_target = export_target(source, out, same)
    assert write_protected(loaded, protected, same_target, same, numbered=True) == out / "x.png"
    assert write_protected(loaded, protected, same_target, same, numbered=True) == out / "x (2).png"
    # the source's own folder with its own name: the original is never one of the candidates
    own = write_protected(loaded, protected, export_target(source, tmp_path, same), same, numbered=True)
    assert own == tmp_path / "x (2).png" and source.read_bytes() == original
    assert not list(out.glob(".*"))  # no temp file left


def test_a_name_taken_between_the_check_and_the_write_is_never_overwritten(tmp_path, monkeypatch):
    source = photo(tmp_path / "y.png")
    loaded = open_photo(source)
    out = tmp_path / "out"
    out.mkdir()
    real = export_module.write_atomic
    raced: list[Path] = []

    def another_writer_first(image, target, fmt, params, overwrite=False):
        if not raced:  # another program takes the name just before our write
            target.write_bytes(b"the other program's file")
            raced.append(target)
        return real(image, target, fmt, params, overwrite=overwrite)

    monkeypatch.setattr(export_module, "write_atomic", another_writer_first)
    written = write_protected(loaded, pil_to_tensor(loaded.rgb), out / "y_cloaked.png", ExportOptions(), numbered=True)
    assert raced == [out / "y_cloaked.png"] and raced[0].read_bytes() == b"the other program's file"
    assert written == out / "y_cloaked (2).png"
    assert not [p for p in out.iterdir() if p.name.endswith(".part")]


# -- the app and the command line: one pipeline -------------------------------------------------------------------


def test_the_app_keeps_one_protector_and_lends_it_its_detector(monkeypatch):
    from facecloak.app.model import RunSettings
    from facecloak.app.worker import RunControl, Worker
    from facecloak.core import protect

    built: list[SimpleNamespace] = []

    def fake_protector(config, ensemble, device, detector):
        built.append(SimpleNamespace(configs=[config], ensemble=ensemble, detector=detector))
        built[-1].configure = built[-1].configs.append
        return built[-1]

    monkeypatch.setattr(protect, "Protector", fake_protector)
    worker = Worker(RunControl())
    monkeypatch.setattr(worker, "_get_detector", lambda: "the app's detector")
    first = worker._get_protector(RunSettings(preset="mid"))
    assert worker._get_protector(RunSettings(preset="high", steps=2)) is first  # a new run, other settings
    assert len(built) == 1 and first.detector == "the app's detector"
    assert [c.steps for c in first.configs] == [15, 15, 2]
    assert worker._get_protector(RunSettings(ensemble=("sface",))) is not first  # other models: a new one
    assert built[-1].ensemble == ["sface"]


@pytest.mark.needs_models
def test_the_app_and_the_command_line_write_the_same_protected_copy(tmp_path, astronaut):
    from facecloak.app.model import RunSettings
    from facecloak.app.worker import PhotoJob, RunControl, Worker
    from facecloak.core.batch import BatchSettings, run_batch
    from facecloak.core.batch import Worker as BatchWorker
    from facecloak.core.zoo.manifest import load_manifest
    from facecloak.core.zoo.registry import cache_status

    if not cache_status(load_manifest()["sface"]).ready:
        pytest.skip("sface not converted")
    source = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).resize((256, 256)).save(source, quality=90)
    cli = BatchWorker(BatchSettings(steps=2, ensemble=("sface",), device="cpu"))
    summary = run_batch([source], tmp_path / "cli", cli.settings, worker=cli, log=lambda _t: None)
    (done,) = summary.results
    settings = RunSettings(steps=2, ensemble=("sface",), device="cpu", output_dir=str(tmp_path / "app"), measure=False)
    worker = Worker(RunControl())
    result = worker._protect_one(PhotoJob("k", source), settings, worker._get_protector(settings))
    assert done.status == result.status == "protected" and result.saved
    assert result.output.read_bytes() == done.output.read_bytes()  # one pipeline: byte-identical copies
    assert not np.array_equal(pixels(result.output), pixels(source))  # and it is a protected photo
