"""The Search threat model's arithmetic on synthetic embeddings with a known answer."""

from __future__ import annotations

import math

import pytest
import torch

from facecloak.core.search import (
    GALLERY_SIZES,
    SearchThresholds,
    ThresholdEstimate,
    genuine_scores,
    impostor_thresholds,
    impostor_top_scores,
    largest_gallery_found,
    ranks,
    save_search_thresholds,
    search_thresholds,
    thresholds_at_far,
)


def unit(angle_deg: float) -> torch.Tensor:
    """A 2-d unit vector whose cosine with (1, 0) is cos(angle)."""
    a = math.radians(angle_deg)
    return torch.tensor([math.cos(a), math.sin(a)])


def at_cosine(c: float) -> torch.Tensor:
    return unit(math.degrees(math.acos(c)))


def test_rank_counts_distractors_scoring_at_or_above_the_target():
    probe = torch.tensor([[1.0, 0.0]])
    target = at_cosine(0.5)[None]
    gallery = torch.stack([at_cosine(c) for c in (0.9, 0.6, 0.5, 0.4, 0.1, -0.7)])
    # 0.9 and 0.6 score higher, 0.5 ties (counted ahead: never assume the adversary's bad luck)
    assert ranks(probe, target, gallery).tolist() == [4]
    assert ranks(probe, at_cosine(0.95)[None], gallery).tolist() == [1]
    assert ranks(probe, at_cosine(-0.9)[None], gallery).tolist() == [7]
    assert ranks(probe, target, gallery[:0]).tolist() == [1]  # an empty gallery: first


def test_ranks_are_per_probe_and_independent_of_block_size():
    torch.manual_seed(0)
    probes = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    targets = torch.nn.functional.normalize(probes + 0.8 * torch.randn(5, 16), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(20_000, 16), dim=1)
    got = ranks(probes, targets, gallery)
    expected = [1 + int(((gallery @ p) >= (p @ t)).sum()) for p, t in zip(probes, targets, strict=True)]
    assert got.tolist() == expected


def test_impostor_pairs_exclude_same_identity_and_count_each_pair_once():
    # four faces, identities 0, 0, 1, 2: impostor pairs (0,2) (0,3) (1,2) (1,3) (2,3); (0,1) is genuine
    faces = torch.stack([at_cosine(1.0), at_cosine(0.8), at_cosine(0.6), unit(180.0)])
    top, pairs = impostor_top_scores(faces, [0, 0, 1, 2], keep=10)
    assert pairs == 5
    expected = sorted([float(faces[i] @ faces[j]) for i, j in ((0, 2), (0, 3), (1, 2), (1, 3), (2, 3))], reverse=True)
    assert top.tolist() == pytest.approx(expected)
    assert genuine_scores(faces, [0, 0, 1, 2]).tolist() == pytest.approx([0.8])


def test_thresholds_at_far_leave_exactly_far_times_pairs_above():
    scores = torch.arange(1000, 0, -1, dtype=torch.float32) / 1000  # 1.000, 0.999, ..., 0.001: 1,000 pairs
    estimates = thresholds_at_far(scores, 1000, [1e-2, 1e-3, 1e-4])
    at_1e2, at_1e3, at_1e4 = estimates
    assert at_1e2.pairs_above == 10 and at_1e2.threshold == pytest.approx((0.991 + 0.990) / 2)
    assert at_1e3.pairs_above == 1 and at_1e3.threshold == pytest.approx((1.0 + 0.999) / 2)
    # 1,000 pairs cannot say where 1 in 10,000 lies
    assert at_1e4.threshold is None and at_1e4.pairs_above == 0
    assert at_1e3.gallery_size == 1000


def test_impostor_thresholds_match_brute_force_on_random_embeddings():
    torch.manual_seed(1)
    n = 700
    identities = torch.randint(0, 300, (n,))
    faces = torch.nn.functional.normalize(torch.randn(n, 8), dim=1)
    estimates = impostor_thresholds(faces, identities, fars=(1e-2, 1e-3, 1e-4))
    i, j = torch.triu_indices(n, n, offset=1)
    keep = identities[i] != identities[j]
    every = (faces[i[keep]] * faces[j[keep]]).sum(1)
    for e in estimates:
        assert e.pairs_total == len(every)
        k = math.floor(e.far * len(every))
        assert int((every >= e.threshold).sum()) == k == e.pairs_above
    # more blocks than one: the same answer
    small_blocks, pairs = impostor_top_scores(faces, identities, keep=50, block=64)
    one_block, _ = impostor_top_scores(faces, identities, keep=50, block=4096)
    assert pairs == len(every) and torch.equal(small_blocks, one_block)


def test_largest_gallery_found_skips_sizes_without_an_estimate():
    estimates = [
        ThresholdEstimate(1e-3, 0.30, 85_000, 85_000_000),
        ThresholdEstimate(1e-4, 0.40, 8_500, 85_000_000),
        ThresholdEstimate(1e-5, 0.50, 850, 85_000_000),
        ThresholdEstimate(1e-6, None, 0, 85_000),
    ]
    assert largest_gallery_found(0.20, estimates) == 0
    assert largest_gallery_found(0.30, estimates) == 1_000  # at the threshold counts as a match
    assert largest_gallery_found(0.45, estimates) == 10_000
    assert largest_gallery_found(0.99, estimates) == 100_000
    assert GALLERY_SIZES == (1_000, 10_000, 100_000, 1_000_000)


def test_measured_thresholds_are_stored_and_read_back(tmp_path, monkeypatch):
    from facecloak.core import search

    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path))
    monkeypatch.setattr(search, "MEASURED", {})  # this release's table aside: only what is stored here
    table = SearchThresholds("openface", (ThresholdEstimate(1e-3, 0.8, 10, 10_000),), 0.7, 141, "a test")
    other = SearchThresholds("dlib_resnet", (ThresholdEstimate(1e-3, 0.9, 10, 10_000),), None, 141, "a test")
    path = save_search_thresholds([table])
    save_search_thresholds([other])  # merged with what is there
    assert path.parent == tmp_path / "search" and not list(path.parent.glob("*.part"))
    assert search_thresholds("openface") == table
    assert search_thresholds("dlib_resnet") == other
    # no measured table: the manifest's FAR 1e-3 threshold answers for a gallery of 1,000 alone
    fallback = search_thresholds("not_a_model", fallback_far_1e3=0.42)
    assert [(e.gallery_size, e.threshold) for e in fallback.estimates] == [(1000, 0.42)]
    assert search_thresholds("not_a_model") is None
    path.write_text("{ damaged")
    assert search_thresholds("openface", fallback_far_1e3=0.5).estimates[0].threshold == 0.5


def test_search_rows_of_the_benchmark_on_a_known_gallery():
    """Two probes: one whose protected photo outscores every distractor, one outscored by all of them."""
    from facecloak.bench.protect import search_cells

    probes = torch.stack([at_cosine(1.0), at_cosine(1.0)])
    targets = torch.stack([at_cosine(0.9), at_cosine(0.5)])
    clean = torch.stack([at_cosine(0.95), at_cosine(0.95)])
    gallery = torch.stack([at_cosine(0.6)] * 1_200)
    estimates = (ThresholdEstimate(1e-3, 0.55, 700, 700_000), ThresholdEstimate(1e-4, 0.92, 70, 700_000))
    thresholds = SearchThresholds("m", estimates, 0.7, 1200, "a test")
    rows = {r["gallery_size"]: r for r in search_cells("m", "none", probes, targets, clean, gallery, thresholds, 0)}
    assert set(rows) == {1_000, 10_000}  # 10^5 and 10^6: neither measured nor estimated
    at_1e3 = rows[1_000]
    assert at_1e3["rank_protected"] == 0.5  # 0.5 is outscored by the distractors' 0.6, 0.9 is not
    assert at_1e3["threshold_protected"] == 0.5  # 0.5 < 0.55 <= 0.9
    assert at_1e3["threshold_baseline"] == 0.0 and at_1e3["rank_baseline"] == 0.0
    assert "rank_protected" not in rows[10_000]  # 1,200 distractors cannot measure a gallery of 10,000
    assert rows[10_000]["threshold_protected"] == 1.0 and rows[10_000]["pairs_above"] == 70
    lo, hi = at_1e3["threshold_ci"]
    assert lo < 0.5 < hi and at_1e3["n_pairs"] == 2


def test_distractors_leave_out_the_benchmark_identities_and_are_cached(tmp_path, monkeypatch):
    from facecloak.bench.protect import EmbeddingCache, distractor_photos
    from facecloak.core.detect import Face

    data = tmp_path / "data"
    for folder, name in (("lfw_rest", "Ann"), ("lfw", "Bob"), ("lfw", "Cid")):
        (data / folder / name).mkdir(parents=True)
        (data / folder / name / f"{name}_0001.jpg").write_bytes(b"")
    photos = distractor_photos(data, exclude={"Bob"})
    assert [p.parent.name for p in photos] == ["Ann", "Cid"]

    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "models").mkdir(parents=True)
    (tmp_path / "cache" / "models" / "fake.safetensors").write_bytes(b"weights")
    calls = []

    class Fake:
        name, embedding_dim = "fake", 2

        def aligner(self, photo, faces):
            return photo

        def __call__(self, crops):
            calls.append(len(crops))
            return crops.mean(dim=(2, 3))[:, :2]

    monkeypatch.setattr("facecloak.bench.protect.load_image", lambda p: torch.full((1, 3, 4, 4), len(p.name) / 20))
    face = Face(box=(0, 0, 1, 1), score=1.0, landmarks=((0, 0),) * 5)
    first = EmbeddingCache("fake").embed(Fake(), photos, [face, face], data)
    assert calls == [2] and first.shape == (2, 2)
    again = EmbeddingCache("fake").embed(Fake(), photos, [face, face], data)  # read back: nothing recomputed
    assert calls == [2] and torch.equal(first, again)
    (tmp_path / "cache" / "models" / "fake.safetensors").write_bytes(b"rebuilt weights")
    EmbeddingCache("fake").embed(Fake(), photos, [face, face], data)  # a rebuilt model starts afresh
    assert calls == [2, 2]


def test_this_releases_thresholds_cover_every_evaluator_in_order(tmp_path, monkeypatch):
    from facecloak.core import search
    from facecloak.core.zoo.manifest import Roles

    monkeypatch.setattr(search, "thresholds_path", lambda: tmp_path / "none.json")  # nothing measured here
    for name in Roles.load().evaluators:
        table = search_thresholds(name)
        assert table is not None and table.evaluator == name and 0 < table.genuine_median < 1
        values = [e.threshold for e in sorted(table.estimates, key=lambda e: e.gallery_size)]
        assert [e.gallery_size for e in sorted(table.estimates, key=lambda e: e.gallery_size)] == list(GALLERY_SIZES)
        assert values == sorted(values)  # a larger gallery needs a higher score to be found
        for e in table.estimates:
            assert e.pairs_above == pytest.approx(e.far * e.pairs_total, rel=0.01)
