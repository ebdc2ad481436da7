"""Atomic whole-file replacement: no half files, no litter, and writers that never share a temporary file."""

from __future__ import annotations

import os
import stat

import pytest

from facecloak.core.files import UMASK, replace_atomically


def test_a_writer_inside_another_writer_of_the_same_file_does_not_collide(tmp_path):
    # what two benchmarks saving the same cache at the same moment do: with one fixed temporary name the
    # second writer's rename took the first one's file away and the first failed (FileNotFoundError)
    target = tmp_path / "cache.json"

    def outer(tmp):
        tmp.write_text("outer")
        replace_atomically(target, lambda inner: inner.write_text("inner"))
        assert tmp.read_text() == "outer"

    replace_atomically(target, outer)
    assert target.read_text() == "outer"  # the last rename wins, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "weights.bin"
    target.write_bytes(b"old")

    def broken(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        replace_atomically(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]


def test_the_new_file_gets_ordinary_permissions_and_the_prefix_marks_the_temporary(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    seen = []
    replace_atomically(target, lambda tmp: seen.append(tmp.name) or tmp.write_text("x"), prefix=".facecloak-")
    assert seen[0].startswith(".out.txt.facecloak-") and seen[0].endswith(".part")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o666 & ~UMASK  # not mkstemp's 0600


def test_detection_caches_saved_by_two_processes_keep_both_entries(tmp_path):
    from facecloak.bench.verification import DetectionCache

    path = tmp_path / "central_faces.json"
    first, second = DetectionCache(path), DetectionCache(path)
    first._entries["a.jpg"] = None
    second._entries["b.jpg"] = None
    first.save()
    second.save()
    assert set(DetectionCache(path)._entries) == {"a.jpg", "b.jpg"}
