"""``facecloak train-surrogate``: PGD within its ball, training that lowers the adversarial loss, the cached crops
and targets, the fp16 weights file's round trip and its base check, and the command line's refusals."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from facecloak.cli import main
from facecloak.core.zoo.registry import load_model
from facecloak.train.surrogate import (
    Augmentation,
    FaceCrops,
    TrainConfig,
    WeightAverage,
    augment,
    base_weights_sha256,
    cosine,
    distillation_loss,
    embed,
    holdout_split,
    learning_rate,
    load_surrogate,
    make_batch,
    pgd_attack,
    read_surrogate_metadata,
    save_surrogate,
    to_uint8,
    train_step,
    train_surrogate,
    trainable_parameters,
    training_crops,
)

BASE = "mobileface"  # the cheapest model of the zoo


@pytest.fixture(scope="module")
def astronaut_crop(astronaut_photo, astronaut_faces) -> torch.Tensor:
    return load_model(BASE).aligner(astronaut_photo, astronaut_faces[:1])


@pytest.fixture(scope="module")
def crops(astronaut_crop) -> torch.Tensor:
    """Eight different views of the astronaut's face (shifted, scaled, recoloured), quantised like stored crops."""
    views = augment(astronaut_crop.repeat(8, 1, 1, 1), Augmentation(shift=4.0), torch.Generator().manual_seed(3))
    return to_uint8(views).float() / 255


def adversarial_loss(model, crops: torch.Tensor, targets: torch.Tensor, config: TrainConfig) -> float:
    adv = pgd_attack(
        model, crops, targets, config.norm, config.radius, config.pgd_steps, config.step, True, torch.Generator()
    )
    loss, _, _ = distillation_loss(model, crops, adv, targets, config.clean_weight)
    return loss.item()


# --- pure pieces --------------------------------------------------------------------------------------------------


def test_config_units_and_refusals():
    assert TrainConfig(BASE, norm="linf", epsilon=2).radius == pytest.approx(2 / 255)
    assert TrainConfig(BASE, norm="linf", epsilon=2, pgd_steps=2).step == pytest.approx(2.5 / 255)
    assert TrainConfig(BASE, norm="l2", epsilon=0.5, step_size=0.2).step == pytest.approx(0.2)
    for bad in ({"norm": "l1"}, {"epsilon": 0}, {"epsilon": 100}, {"pgd_steps": 0}, {"swa_start": 1.0}):
        with pytest.raises(ValueError):
            TrainConfig(BASE, **bad)
    assert json.loads(TrainConfig(BASE, swa_start=0.5).to_json())["swa_start"] == 0.5


def test_learning_rate_decays_by_cosine_and_holds_while_averaging():
    plain = TrainConfig(BASE, lr=1e-4)
    rates = [learning_rate(s, 100, plain) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[50] == pytest.approx(5e-5) and rates[-1] < 1e-6
    assert all(a >= b for a, b in itertools.pairwise(rates))
    swa = TrainConfig(BASE, lr=1e-4, swa_start=0.6, swa_lr=3e-5)
    rates = [learning_rate(s, 100, swa) for s in range(100)]
    assert rates[0] == pytest.approx(1e-4) and rates[30] == pytest.approx(3e-5 + 7e-5 * 0.5)
    assert set(rates[60:]) == {3e-5}


def test_weight_average_is_the_mean_of_the_snapshots():
    param = torch.zeros(3)
    average = WeightAverage([param])
    for value in (1.0, 2.0, 6.0):
        param.fill_(value)
        average.update([param])
    average.copy_to([param])
    assert torch.allclose(param, torch.full((3,), 3.0)) and average.count == 3


def test_holdout_keeps_whole_people_and_a_fixed_draw():
    people = [f"p{i // 2}" if i < 40 else f"q{i}" for i in range(100)]  # 20 people with two photos, 60 with one
    train, held = holdout_split(people, 25)
    assert len(held) == 25 and len(train) == 75
    assert not {people[i] for i in held.tolist()} & {people[i] for i in train.tolist()}
    assert torch.equal(held, holdout_split(people, 25)[1])


@pytest.mark.needs_models
def test_augment_and_flip_keep_crops_and_targets_together(crops):
    generator = torch.Generator().manual_seed(0)
    out = augment(crops, Augmentation(), generator)
    assert out.shape == crops.shape and out.min() >= 0 and out.max() <= 1
    assert (out - crops).abs().mean() > 0.01  # every call moves the crops
    assert torch.equal(out, augment(crops, Augmentation(), torch.Generator().manual_seed(0)))
    data = FaceCrops(to_uint8(crops), torch.eye(8), -torch.eye(8), tuple("abcdefgh"), tuple("abcdefgh"))
    index = torch.arange(8)
    batch, targets = make_batch(data, index, None, torch.Generator().manual_seed(1))
    mirrored = torch.tensor([torch.equal(batch[i], crops[i].flip(-1)) for i in range(8)])
    assert 0 < mirrored.sum() < 8
    assert torch.equal(targets, torch.where(mirrored[:, None], -torch.eye(8), torch.eye(8)))


# --- on a real model ----------------------------------------------------------------------------------------------


@pytest.mark.needs_models
@pytest.mark.parametrize(("norm", "epsilon"), [("linf", 2.0), ("l2", 0.5)])
def test_pgd_lowers_the_cosine_within_epsilon(crops, norm, epsilon):
    model = load_model(BASE)
    config = TrainConfig(BASE, norm=norm, epsilon=epsilon, pgd_steps=3)
    targets = embed(model, crops)
    adv = pgd_attack(model, crops, targets, norm, config.radius, 3, config.step, True, torch.Generator())
    delta = adv - crops
    assert adv.min() >= 0 and adv.max() <= 1
    if norm == "linf":
        assert delta.abs().max() <= config.radius + 1e-6
    else:
        assert delta.flatten(1).norm(dim=1).max() <= config.radius + 1e-5
    assert delta.abs().max() > 0.5 * config.radius / (1 if norm == "linf" else 20)
    similarity = cosine(embed(model, adv), targets)
    assert similarity.max() < 0.99 and similarity.mean() < 0.95  # clean: 1.0


@pytest.mark.needs_models
def test_training_steps_change_the_weights_and_lower_the_adversarial_loss(crops):
    model = load_model(BASE)
    config = TrainConfig(BASE, batch_size=8, lr=3e-4)
    targets = embed(model, crops)
    before_weights = {k: v.clone() for k, v in model.network.state_dict().items()}
    before = adversarial_loss(model, crops, targets, config)
    params = trainable_parameters(model)
    optimizer = torch.optim.Adam(params, lr=config.lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(6):
        train_step(model, optimizer, crops, targets, config, generator)
    after = adversarial_loss(model, crops, targets, config)
    changed = [k for k, v in model.network.state_dict().items() if not torch.equal(v, before_weights[k])]
    assert len(changed) > len(before_weights) // 2
    print(f"adversarial loss {before:.4f} -> {after:.4f}")
    assert after < 0.8 * before, (before, after)
    assert not model.training  # batch norms kept their running statistics


@pytest.mark.needs_models
@pytest.mark.parametrize("live_teacher", [False, True])
def test_train_surrogate_runs_evaluates_and_averages(crops, live_teacher):
    model = load_model(BASE)
    data = FaceCrops(
        to_uint8(crops), embed(model, crops), embed(model, crops.flip(-1)), tuple("abcdefgh"), tuple("abcdefgh")
    )
    config = TrainConfig(BASE, epochs=2, batch_size=3, swa_start=0.5, holdout=2, live_teacher=live_teacher)
    lines: list[str] = []
    result = train_surrogate(model, data, config, log=lines.append)
    assert result.steps == 4 and result.train_faces == 6
    assert result.before.faces == 2 and result.before.clean_mean == pytest.approx(1.0, abs=1e-5)
    assert result.before.robust_mean < 0.95  # the base is not robust to a 4/255 attack
    assert result.passed == (result.after.clean_mean >= 0.95)
    assert any(line.startswith("[after]") for line in lines) and any("left" in line for line in lines)
    assert any("averaged 2 snapshots" in line for line in lines)
    assert not any(p.requires_grad for p in model.parameters())


@pytest.fixture(scope="module")
def trained(crops):
    """A mobileface after a few training steps (weights different from the base)."""
    model = load_model(BASE)
    targets = embed(model, crops)
    params = trainable_parameters(model)
    optimizer = torch.optim.Adam(params, lr=3e-4)
    for _ in range(3):
        train_step(model, optimizer, crops, targets, TrainConfig(BASE), torch.Generator().manual_seed(0))
    for param in params:
        param.requires_grad_(False)
    return model


@pytest.mark.needs_models
def test_save_and_load_round_trip_keeps_the_embeddings_and_the_family(trained, crops, tmp_path):
    path = save_surrogate(tmp_path / "mobileface_rob.safetensors", trained, {"base": BASE, "data": "test"})
    stored = load_file(str(path))
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    metadata = read_surrogate_metadata(path)
    assert metadata["base_sha256"] == base_weights_sha256(BASE) and metadata["data"] == "test"
    loaded = load_surrogate(path)
    assert loaded.name == "mobileface_rob" and loaded.spec.family == trained.spec.family
    assert loaded.input_size == trained.input_size and not loaded.training
    ours, theirs, base = embed(trained, crops), embed(loaded, crops), embed(load_model(BASE), crops)
    assert (ours - theirs).abs().max() < 3e-3
    assert cosine(ours, theirs).min() > 0.9999
    assert (ours - base).abs().max() > 10 * (ours - theirs).abs().max()  # the trained weights came back, not the base
    assert load_surrogate(path, name="other").name == "other"


@pytest.mark.needs_models
def test_load_refuses_a_file_from_other_base_weights(trained, tmp_path):
    path = save_surrogate(tmp_path / "s.safetensors", trained, {"base": BASE})
    metadata = read_surrogate_metadata(path) | {"base_sha256": "0" * 64}
    forged = tmp_path / "forged.safetensors"
    save_file(load_file(str(path)), str(forged), metadata=metadata)
    with pytest.raises(ValueError, match="sha256"):
        load_surrogate(forged)
    plain = tmp_path / "plain.safetensors"
    save_file(load_file(str(path)), str(plain))
    with pytest.raises(ValueError, match="not a FaceCloak surrogate"):
        load_surrogate(plain)


@pytest.mark.needs_models
def test_transfer_takes_a_surrogate_under_a_new_name_only(trained, tmp_path, capsys):
    path = save_surrogate(tmp_path / "s.safetensors", trained, {"base": BASE})
    assert main(["bench", "transfer", "--data", str(tmp_path), "--surrogate", f"{BASE}={path}"]) == 2
    assert "a model of the zoo has that name" in capsys.readouterr().err
    # under a new name it is a row of its own (its family is the base's): planned, then the empty data folder refused
    assert main(["bench", "transfer", "--data", str(tmp_path), "--surrogate", f"rob={path}", "--rows", "rob"]) == 2
    out, err = capsys.readouterr()
    assert "1 attacks per face for 1 row(s)" in out and "no photo folder with usable identities" in err


@pytest.mark.needs_models
def test_training_crops_are_cached_with_their_targets(astronaut, detector, tmp_path):
    from PIL import Image

    from facecloak.bench.verification import DetectionCache

    data_folder = tmp_path / "data"
    for name, pixels in (("Astro_Naut", astronaut), ("Mirror_Naut", astronaut[:, ::-1])):
        (data_folder / "lfw_rest" / name).mkdir(parents=True)
        Image.fromarray(pixels.copy()).save(data_folder / "lfw_rest" / name / f"{name}_0001.jpg", quality=95)
    model = load_model(BASE)
    detections = DetectionCache(tmp_path / "detections.json")
    data = training_crops(model, data_folder, detections=detections, detector=detector, cache_dir=tmp_path / "t")
    assert data.crops.dtype == torch.uint8 and data.crops.shape == (2, 3, *model.input_size)
    assert data.people == ("Astro_Naut", "Mirror_Naut") and data.skipped == 0
    assert data.describe() == "lfw_rest: 2 photos of 2 people, disjoint from lfw/"
    crops = data.crops.float() / 255
    assert torch.allclose(data.targets, embed(model, crops), atol=1e-5)
    assert torch.allclose(data.mirror_targets, embed(model, crops.flip(-1)), atol=1e-5)
    assert cosine(data.targets[:1], data.mirror_targets[1:]).item() > 0.95  # the mirrored photo's mirrored crop

    class NoDetection:
        def get(self, *args):
            raise AssertionError("the cached crops should have been used")

    again = training_crops(model, data_folder, detections=NoDetection(), cache_dir=tmp_path / "t", log=lambda _: None)
    assert torch.equal(again.crops, data.crops) and torch.equal(again.targets, data.targets)


# --- command line -------------------------------------------------------------------------------------------------


def test_cli_refuses_a_missing_data_folder(tmp_path, capsys):
    code = main(
        ["train-surrogate", BASE, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "s.safetensors")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "no lfw_rest/ folder" in err and "nowhere" in err and "Traceback" not in err
    assert not (tmp_path / "s.safetensors").exists()


def test_cli_refuses_bad_settings_and_unknown_models(tmp_path, capsys):
    (tmp_path / "lfw_rest").mkdir()
    out = str(tmp_path / "s.safetensors")
    assert main(["train-surrogate", BASE, "--data", str(tmp_path), "--epsilon", "100", "--out", out]) == 2
    assert "8-bit levels" in capsys.readouterr().err
    assert main(["train-surrogate", "no_such_model", "--data", str(tmp_path), "--out", out]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    assert main(["train-surrogate", BASE, "--data", str(tmp_path), "--out", str(tmp_path / "s.pt")]) == 2
    assert ".safetensors" in capsys.readouterr().err
