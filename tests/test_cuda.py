"""The attack on a CUDA GPU: device selection, the CPU's result within tolerance, no NaN in bfloat16, cancellation,
bounded memory, and the speed benchmark. Skipped where torch sees no CUDA GPU; tools/gpu_check.sh runs them on one.

``FACECLOAK_TEST_DEVICE=cpu`` rehearses them on the CPU (tools/gpu_check.sh rehearse): the GPU's execution (batched,
bfloat16) then runs on the CPU, checked against the CPU's own way, and only the GPU-only checks skip. The models
come from the model cache (``FACECLOAK_CACHE``; on the GPU machine the few small ones the check carries), or random
weights of their true architecture where only the architecture matters.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from facecloak.core.attack import Cloak, CloakCancelled, preset
from facecloak.core.attack.execution import Execution
from facecloak.core.detect import Face
from facecloak.core.device import available_devices, cuda_has_bf16, device_label, select_device
from facecloak.core.zoo.manifest import load_manifest, load_roles
from facecloak.core.zoo.registry import cache_status, load_model

DEVICE = os.environ.get("FACECLOAK_TEST_DEVICE", "cuda")
ON_GPU = DEVICE == "cuda"
SMALL_SURROGATES = ("mobileface", "facesdk_mbf")  # 2 and 4 MB: what the GPU check carries

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        ON_GPU and not torch.cuda.is_available(),
        reason="needs a CUDA GPU (tools/gpu_check.sh runs these there; FACECLOAK_TEST_DEVICE=cpu rehearses them)",
    ),
]
gpu_only = pytest.mark.skipif(not ON_GPU, reason="a GPU-only check: nothing to rehearse on the CPU")


@pytest.fixture(scope="module")
def device() -> torch.device:
    return torch.device(DEVICE)


@pytest.fixture(scope="module")
def execution(device) -> Execution:
    """The GPU's execution: what CUDA chooses on its own, and the same shape forced on the CPU when rehearsing."""
    if device.type == "cuda":
        return Execution.for_device(device, preset("mid"))
    return Execution(batched=True, autocast=torch.bfloat16)


def surrogates(device: torch.device | str) -> list:
    manifest = load_manifest()
    for name in SMALL_SURROGATES:
        status = cache_status(manifest[name])
        if not status.ready:
            pytest.skip(f"{name} not in the model cache: {status.message}")
    return [load_model(name, device) for name in SMALL_SURROGATES]


def test_device_selection_takes_the_gpu(device):
    if not ON_GPU:
        assert select_device("cpu").type == "cpu" and device_label("cpu").startswith("CPU (")
        assert not Execution.for_device(device, preset("mid")).batched
        return
    assert available_devices()[0] == "cuda"
    assert select_device("auto").type == "cuda" and select_device("cuda").type == "cuda"
    assert torch.cuda.get_device_name() in device_label("cuda") and "GB" in device_label("cuda")
    chosen = Execution.for_device(torch.device("cuda"), preset("mid"))
    assert chosen.batched
    assert chosen.autocast == (torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else None)
    assert cuda_has_bf16("cuda") == (torch.cuda.get_device_capability() >= (8, 0))
    assert Execution.for_device(torch.device("cuda"), preset("mid", cuda_autocast=False)).autocast is None


def _protection(models_cpu, photo, faces, protected) -> torch.Tensor:
    """Per model and face, the cosine between clean and protected embeddings, measured in float32 on the CPU."""
    with torch.no_grad():
        rows = []
        for model in models_cpu:
            clean = model(model.aligner(photo, faces))
            after = model(model.aligner(protected.cpu(), faces))
            rows.append((clean * after).sum(dim=1))
    return torch.stack(rows)


@pytest.mark.parametrize("mixed", [False, True], ids=["float32", "bfloat16"])
def test_a_protected_face_matches_the_cpu_result(device, execution, astronaut_photo, astronaut_faces, mixed):
    """The GPU's run protects the face as the CPU's does: same steps, inside the budget and the face region, about
    the same similarities, and a change pointing the same way (float rounding, the batched crop and budget grid,
    and bfloat16 make the numbers differ; sign steps amplify that)."""
    config = preset("mid", steps=8, warm_start=False)
    models_cpu = surrogates("cpu")
    reference = Cloak(models_cpu, config)(astronaut_photo, astronaut_faces)
    run = Execution(batched=True, autocast=execution.autocast if mixed else None)
    result = Cloak(surrogates(device), config, execution=run)(astronaut_photo.to(device), astronaut_faces)
    assert result.photo.device.type == device.type
    protected = result.photo.cpu()
    assert torch.isfinite(protected).all() and torch.equal(protected, torch.round(protected * 255) / 255)
    assert len(result.steps) == len(reference.steps) == 8
    assert 0 < result.face_dssim[0] <= config.dssim_budget
    before = _protection(models_cpu, astronaut_photo, astronaut_faces, reference.photo)
    after = _protection(models_cpu, astronaut_photo, astronaut_faces, protected)
    print("similarities cpu", before.flatten().tolist(), "device", after.flatten().tolist())
    assert torch.all(after < 0.97), after
    assert torch.allclose(after, before, atol=0.06), (before, after)
    cosine = torch.nn.functional.cosine_similarity(
        (protected - astronaut_photo).flatten(), (reference.photo - astronaut_photo).flatten(), dim=0
    )
    print("change cosine", float(cosine))
    assert float(cosine) > 0.5, float(cosine)  # CPU rehearsal: 0.8


def test_no_nan_in_bfloat16(device, execution, astronaut_photo, astronaut_faces):
    """Every ensemble architecture gives finite embeddings and input gradients under the GPU's autocast (random
    weights: no cache needed); the small real surrogates keep their float32 embeddings within cosine 0.99, and a
    bfloat16 attack ends finite."""
    from facecloak.bench.speed import random_weights_model

    dtype = execution.autocast or torch.bfloat16
    for name in load_roles()["ensemble"]:
        model = random_weights_model(name, device)
        crops = torch.rand(4, 3, *model.input_size, device=device, requires_grad=True)
        with torch.autocast(device.type, dtype=dtype):
            embeddings = model(crops).float()
        (grad,) = torch.autograd.grad(embeddings[:, 0].sum(), crops)
        assert torch.isfinite(embeddings).all() and torch.isfinite(grad).all(), name
    models = surrogates(device)
    for model in models:
        crops = model.aligner(astronaut_photo.to(device), astronaut_faces)
        with torch.no_grad():
            full = model(crops)
            with torch.autocast(device.type, dtype=dtype):
                mixed = model(crops).float()
        assert float((full * mixed).sum()) > 0.99, model.name
    config = preset("mid", steps=3, warm_start=False)
    result = Cloak(models, config, execution=execution)(astronaut_photo.to(device), astronaut_faces)
    numbers = [m.loss for m in result.steps] + [v for m in result.steps for v in m.similarity.values()]
    assert all(torch.isfinite(torch.tensor(numbers))) and torch.isfinite(result.photo).all()


def test_cancellation_stops_the_gpu_run_within_a_step(device, execution, astronaut_photo, astronaut_faces):
    """Batched, progress arrives a step late, but a cancel still stops the run before its next step, promptly, and
    the same Cloak protects the next photo afterwards."""
    cloak = Cloak(surrogates(device), preset("mid", steps=50, warm_start=False), execution=execution)
    seen: list[int] = []
    asked: list[float] = []

    def should_cancel() -> bool:
        if len(seen) >= 2 and not asked:
            asked.append(time.perf_counter())
        return bool(asked)

    with pytest.raises(CloakCancelled):
        cloak(astronaut_photo.to(device), astronaut_faces, lambda step, total, loss: seen.append(step), should_cancel)
    assert seen == [1, 2]
    assert time.perf_counter() - asked[0] < 1.0
    again = Cloak(cloak.models, preset("mid", steps=2, warm_start=False), execution=execution)
    assert len(again(astronaut_photo.to(device), astronaut_faces).steps) == 2


@gpu_only
def test_a_48_megapixel_photo_fits_an_8_gb_gpu(device, execution, astronaut_photo, astronaut_faces):
    """A face of several megapixels on a 48 MP photo: the attack works on a downscaled copy and composes strip by
    strip, so the GPU's peak stays far under a consumer card's 8 GB."""
    factor = 13  # 512 px -> 6656 px: 44 MP, the face about 1900 px wide
    photo = torch.nn.functional.interpolate(astronaut_photo, scale_factor=factor, mode="bilinear")
    face = astronaut_faces[0]
    large = Face(
        box=tuple(factor * v for v in face.box),
        score=face.score,
        landmarks=tuple((factor * x, factor * y) for x, y in face.landmarks),
    )
    cloak = Cloak(surrogates(device), preset("mid", steps=2, warm_start=False), execution=execution)
    torch.cuda.reset_peak_memory_stats()
    result = cloak(photo.to(device), [large])
    peak = torch.cuda.max_memory_allocated()
    assert 0 < result.face_dssim[0] <= preset("mid").dssim_budget
    assert peak < 6e9, f"peak {peak / 1e9:.1f} GB"


def test_speed_benchmark_runs_on_the_device(device, tmp_path, monkeypatch, capsys):
    """``bench speed --device`` with random weights (no cache): every stage timed, the GPU's memory peak given."""
    from PIL import Image
    from skimage.data import astronaut
    from test_bench import bench

    monkeypatch.setenv("FACECLOAK_CACHE", str(tmp_path / "empty-cache"))
    photo, out = tmp_path / "astronaut.png", tmp_path / "speed.json"
    Image.fromarray(astronaut()).save(photo)
    argv = [
        "bench", "speed", "--photo", str(photo), "--random-weights", "--presets", "low", "--set", "steps=2",
        "--ensemble", "mobileface", "facenet_casia", "--evaluators", "openface", "--device", DEVICE,
        "--output", str(out),
    ]  # fmt: skip
    assert bench(argv) == 0
    summary = json.loads(out.read_text())
    (row,) = summary["rows"]
    assert set(row["seconds"]) == {"load", "detect", "attack", "compose", "export", "report"}
    assert (row["peak_gpu_mb"] is not None) == ON_GPU
    assert "random weights" in capsys.readouterr().out
