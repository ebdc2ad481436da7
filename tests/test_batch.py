"""``facecloak protect`` on albums: options, exit codes, resume after SIGKILL, worker processes, privacy."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facecloak.cli import main
from facecloak.core.batch import JOURNAL_NAME, BatchSettings, Worker, run_batch
from facecloak.core.export import is_facecloak_output
from facecloak.core.image import open_photo
from facecloak.core.zoo.manifest import load_manifest
from facecloak.core.zoo.registry import cache_status

pytestmark = pytest.mark.needs_models
FAST = ["--steps", "1", "--ensemble", "sface", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def _needs_sface():
    status = cache_status(load_manifest()["sface"])
    if not status.ready:
        pytest.skip(f"sface not converted: {status.message}")


def make_album(folder: Path, astronaut: np.ndarray, count: int = 2, size: int = 256) -> list[Path]:
    """``count`` distinct face photos (shifted crops of the astronaut) and one photo without a face."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(astronaut)
    paths = []
    for i in range(count):
        crop = photo.crop((i * 8, i * 4, 512 - i * 4, 512 - i * 8)).resize((size, size))
        sub = folder / ("day1" if i % 2 else "day2")
        sub.mkdir(exist_ok=True)
        path = sub / f"IMG_{i:03d}.jpg"
        exif = Image.Exif()
        exif[0x0110] = "Pixel 7"
        exif.get_ifd(0x8769)[0x9003] = "2021:05:06 07:08:09"
        exif.get_ifd(0x8769)[0xA431] = "SERIAL-XYZ"
        crop.save(path, quality=90, exif=exif)
        paths.append(path)
    noise = np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "landscape.png")
    return paths


def test_album_protected_into_outdir_inside_the_album_and_rerun_skips(tmp_path, astronaut, capsys):
    album = tmp_path / "album"
    photos = make_album(album, astronaut)
    originals = {p: p.read_bytes() for p in photos}
    out = album / "protected"  # inside the album: a second run must not protect its own outputs
    assert main(["protect", str(album), "-o", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "2 protected, 1 no face" in text
    assert f"no face found, no copy written:\n  {album / 'landscape.png'}" in text
    outputs = sorted(out.rglob("*_cloaked.jpg"))  # the album's subfolders are mirrored
    assert outputs == [out / "day1" / "IMG_001_cloaked.jpg", out / "day2" / "IMG_000_cloaked.jpg"]
    assert all(is_facecloak_output(p) for p in outputs)
    stamps = {p: p.stat().st_mtime_ns for p in outputs}
    assert {p: p.read_bytes() for p in photos} == originals  # originals are never modified
    assert main(["protect", str(album), "-o", str(out), *FAST]) == 1  # their copies exist: not protected now
    captured = capsys.readouterr()
    assert "2 skipped (copy exists)" in captured.out and "cloaked_cloaked" not in captured.out
    assert f"{photos[0]}: skipped ({outputs[1]} exists (use --resume or --overwrite))" in captured.err
    assert {p: p.stat().st_mtime_ns for p in outputs} == stamps  # existing outputs are never overwritten
    assert main(["protect", str(album), "-o", str(out), "--resume", *FAST]) == 0
    assert {p: p.stat().st_mtime_ns for p in outputs} == stamps


def test_exit_code_is_nonzero_only_when_something_failed(tmp_path, astronaut, capsys):
    album = tmp_path / "album"
    make_album(album, astronaut, count=1)
    (album / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    assert main(["protect", str(album), "-o", str(tmp_path / "out"), *FAST]) == 1
    captured = capsys.readouterr()
    assert "1 protected, 1 no face, 1 failed" in captured.out
    assert "broken.jpg: damaged or truncated JPEG file" in captured.err
    assert (tmp_path / "out" / "day2" / "IMG_000_cloaked.jpg").exists()  # the failure did not stop the album


def test_expert_knobs_change_the_output_and_a_bad_knob_is_refused_up_front(tmp_path, astronaut, capsys):
    album = tmp_path / "album"
    make_album(album, astronaut, count=1)
    plain, tight = tmp_path / "plain", tmp_path / "tight"
    assert main(["protect", str(album), "-o", str(plain), *FAST]) == 0
    assert main(["protect", str(album), "-o", str(tight), *FAST, "--set", "dssim_budget=0.0005"]) == 0
    name = "day2/IMG_000_cloaked.jpg"
    original = np.asarray(open_photo(album / "day2" / "IMG_000.jpg").rgb, dtype=np.float64)
    change = {
        label: np.abs(np.asarray(open_photo(folder / name).rgb, dtype=np.float64) - original).mean()
        for label, folder in (("plain", plain), ("tight", tight))
    }
    assert change["tight"] < change["plain"], change
    capsys.readouterr()
    assert main(["protect", str(album), "-o", str(tmp_path / "x"), *FAST, "--set", "stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown knob stepz" in err and "dssim_budget" in err
    assert not (tmp_path / "x").exists()  # refused before anything was created


def test_format_suffix_quality_and_metadata_options(tmp_path, astronaut):
    (source,) = make_album(tmp_path / "album", astronaut, count=1)
    out = tmp_path / "out"
    args = ["protect", str(source), "-o", str(out), "--format", "png", "--suffix", "_safe", "--keep-metadata"]
    assert main([*args, *FAST]) == 0
    written = Image.open(out / "IMG_000_safe.png")
    assert written.format == "PNG"
    exif = written.getexif()
    assert exif.get(0x0110) == "Pixel 7" and exif.get_ifd(0x8769).get(0x9003) == "2021:05:06 07:08:09"
    assert b"SERIAL-XYZ" not in (out / "IMG_000_safe.png").read_bytes()
    assert main(["protect", str(source), "-o", str(out), "--quality", "70", *FAST]) == 0
    from facecloak.core.image import estimate_jpeg_quality

    jpeg = Image.open(out / "IMG_000_cloaked.jpg")
    assert estimate_jpeg_quality(jpeg) == 70
    assert not jpeg.getexif()  # stripped by default


def test_report_is_written_next_to_the_output(tmp_path, astronaut, capsys):
    (source,) = make_album(tmp_path / "album", astronaut, count=1)
    out = tmp_path / "out"
    assert main(["protect", str(source), "-o", str(out), "--report", *FAST]) == 0
    text = capsys.readouterr()
    report = out / "IMG_000_cloaked.report.json"
    if not report.exists():
        pytest.skip(f"no evaluator ready for reports: {text.err.strip()[:200]}")
    data = json.loads(report.read_text())
    assert data["ensemble"] == ["sface"] and data["evaluators"] and "sface" not in data["evaluators"]
    assert f"{data['headline']} Own original (worst case): match rate" in text.out  # the threats first


def test_resume_with_report_measures_a_photo_protected_earlier_without_protecting_it_again(tmp_path, astronaut, capsys):
    (source,) = make_album(tmp_path / "album", astronaut, count=1)
    out = tmp_path / "out"
    assert main(["protect", str(source), "-o", str(out), *FAST]) == 0  # as if stopped before the report
    output = out / "IMG_000_cloaked.jpg"
    stamp = (output.stat().st_mtime_ns, output.stat().st_ino)
    capsys.readouterr()
    assert main(["protect", str(source), "-o", str(out), "--resume", "--report", *FAST]) == 0
    text = capsys.readouterr()
    report = out / "IMG_000_cloaked.report.json"
    if not report.exists():
        pytest.skip(f"no evaluator ready for reports: {text.err.strip()[:200]}")
    assert (output.stat().st_mtime_ns, output.stat().st_ino) == stamp  # measured, not protected again
    assert f"{source}: done earlier; Search: " in text.out and "Own original (worst case): match rate" in text.out
    assert json.loads(report.read_text())["ensemble"] == ["sface"]
    journal = json.loads((out / JOURNAL_NAME).read_text())
    assert [e["report"] for e in journal["done"].values()] == [report.name]


def test_privacy_no_network_connection_while_protecting(tmp_path, astronaut, monkeypatch):
    attempts: list[object] = []

    def refuse(*args, **_kwargs):
        attempts.append(args)
        raise OSError("network is blocked in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    (source,) = make_album(tmp_path / "album", astronaut, count=1)
    worker = Worker(BatchSettings(steps=1, ensemble=("sface",)))  # model loading included
    summary = run_batch([source], tmp_path / "out", worker.settings, worker=worker, log=lambda _t: None)
    assert [r.status for r in summary.results] == ["protected"]
    assert attempts == []


def _run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "facecloak.cli", "protect", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def test_sigkill_mid_batch_then_resume_finishes_without_recomputing(tmp_path, astronaut):
    album = tmp_path / "album"
    photos = make_album(album, astronaut, count=8, size=384)
    out = tmp_path / "out"
    process = _run_cli([str(album), "-o", str(out), *FAST])
    deadline = time.monotonic() + 120
    seen = []
    assert process.stdout is not None
    for line in process.stdout:  # kill right after the first photo is reported done
        seen.append(line)
        if ": protected " in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    finished = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in out.rglob("*_cloaked.jpg")}
    assert 0 < len(finished) < len(photos), "the kill must land mid-batch"
    for path in finished:  # what was there at the kill is complete: atomic rename, never half a file
        assert open_photo(path).size == (384, 384)

    resumed = _run_cli([str(album), "-o", str(out), "--resume", "--jobs", "2", *FAST])
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"resuming: {len(finished)} photo(s) already done" in stdout
    outputs = sorted(out.rglob("*_cloaked.jpg"))
    assert len(outputs) == len(photos)
    for path in outputs:
        assert open_photo(path).size == (384, 384)
    for path, stamp in finished.items():  # finished outputs were not recomputed or rewritten
        assert (path.stat().st_mtime_ns, path.stat().st_ino) == stamp
    assert not [p for p in out.rglob("*") if p.name.endswith((".part", ".tmp"))]
    journal = json.loads((out / JOURNAL_NAME).read_text())
    statuses = sorted(e["status"] for e in journal["done"].values())
    assert statuses == ["no face"] + ["protected"] * len(photos)
