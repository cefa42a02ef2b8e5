"""The streaming data path: images decoded per access, an optional shared and bounded image cache,
per-item seeds that make the workers' randomness independent of how many there are, timm's eval
transforms, and sizes as users write them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import assert_one_error, write_image_folder
from PIL import Image
from zoo_classification.task import ClassificationTask, ImageDataset

from zoo_core.engine.loading import batches, default_workers, make_loader
from zoo_core.errors import DataError
from zoo_core.imagecache import SharedImageCache
from zoo_core.sizes import SizeError, parse_size
from zoo_core.specs import InputConfig

CONFIG = InputConfig(size=24, crop_pct=0.75)  # resize to 32, centre crop 24


def dataset(root: Path, augment: dict | None = None, cache: SharedImageCache | None = None) -> ImageDataset:
    task = ClassificationTask()
    data = task.load_data(root, seed=0, val_fraction=0.2)
    return task.dataset(data, "train", input_config=CONFIG, augment=augment or {}, image_cache=cache)


def epoch(items: ImageDataset, *, workers: int, epoch_seed: int = 7, loader=None) -> list[torch.Tensor]:
    task = ClassificationTask()
    loader = loader or make_loader(
        items, collate=task.collate, batch_size=4, sampler=torch.utils.data.SequentialSampler(items), seed=0, workers=workers, pin_memory=False
    )
    loader.sampler.set_epoch(0, epoch_seed)
    return [batch.inputs for batch in batches(loader)]


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "size"), [("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("1.5G", 1_500_000_000), ("0", 0), (1000, 1000)])
def test_sizes_are_read_as_users_write_them(text, size):
    assert parse_size(text, what="--cache-budget") == size


@pytest.mark.parametrize("text", ["lots", "2XB", "-1GB", ""])
def test_a_size_that_is_not_one_names_the_flag(text):
    with pytest.raises(SizeError, match=r"--cache-budget must be a size such as 512MB"):
        parse_size(text, what="--cache-budget")


@pytest.mark.parametrize("flag", ["--cache-budget", "--cache-images"])
def test_finetune_refuses_a_cache_size_that_is_not_a_size(zoo, image_folder, flag):
    result = zoo("finetune", "--recipe", "linear-probe", "--model", "timm:test_resnet", "--no-pretrained", "--data", image_folder, flag, "lots")
    assert_one_error(result, flag, "'lots'")
    assert not Path("runs").exists()


# -- transforms ------------------------------------------------------------------------------------


def test_eval_transforms_follow_timm(tmp_path):
    """Resize the shorter side by crop_pct keeping the aspect ratio, centre crop, normalise: as timm's eval transform."""
    from timm.data import create_transform

    root = tmp_path / "data"
    for index in range(3):
        for label in ("a", "b"):
            folder = root / "train" / label
            folder.mkdir(parents=True, exist_ok=True)
            pixels = torch.randint(0, 256, (60, 90, 3), generator=torch.Generator().manual_seed(index), dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(folder / f"{index}.png")
    items = dataset(root)
    timm_eval = create_transform(input_size=(3, 24, 24), crop_pct=0.75, interpolation="bilinear", mean=CONFIG.mean, std=CONFIG.std)
    ours, label, _ = items[0]
    with Image.open(items.items[0][0]) as image:
        theirs = timm_eval(image.convert("RGB"))
    assert ours.shape == theirs.shape == (3, 24, 24)
    # the same geometry and normalisation; torchvision's uint8 resize rounds a few pixels one level
    # away from PIL's, while a squashed or uncropped image would differ everywhere
    assert (ours - theirs).abs().mean() < 0.005 and (ours - theirs).abs().max() < 0.05


def test_zoo_info_shows_the_eval_transforms(zoo):
    result = zoo("info", "timm:test_resnet")
    assert result.code == 0, result.err
    # test_resnet: 160 px, crop_pct 0.95, mean and std 0.5
    assert "resize shorter side to 168 (bilinear) → centre crop 160 → normalise mean (0.500, 0.500, 0.500)" in result.out


# -- streaming and the shared cache -----------------------------------------------------------------------


def test_without_a_cache_nothing_decoded_is_kept(tmp_path):
    items = dataset(write_image_folder(tmp_path / "data", classes=2, per_class=4))
    first = [items[i][0] for i in range(len(items))]
    assert not any(isinstance(value, torch.Tensor) for value in vars(items).values())  # no tensor held between accesses
    assert all(torch.equal(a, items[i][0]) for i, a in enumerate(first))


def test_workers_fill_one_cache_the_main_process_sees(tmp_path):
    items = dataset(write_image_folder(tmp_path / "data", classes=2, per_class=6), cache=SharedImageCache(12, 10**7))
    before = epoch(items, workers=2)
    assert len(items.cache) == len(items) == 12  # filled by the workers, in memory they share with this process
    again = epoch(items, workers=0)  # now read from the cache
    assert all(torch.equal(a, b) for a, b in zip(before, again))


def test_a_full_cache_keeps_what_fits_and_streams_the_rest(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=2, per_class=6)
    one_image = 3 * 32 * 32  # 16 px PNGs resized to the shorter side 32
    items = dataset(root, cache=SharedImageCache(12, 3 * one_image))
    cached = epoch(items, workers=2)
    assert len(items.cache) == 3 and items.cache.used == 3 * one_image
    assert all(torch.equal(a, b) for a, b in zip(cached, epoch(dataset(root), workers=0)))


def test_random_transforms_do_not_depend_on_the_worker_count(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=2, per_class=8)
    augment = {"crop_scale": 0.3, "hflip": 0.5}
    alone, shared = epoch(dataset(root, augment), workers=0), epoch(dataset(root, augment), workers=2)
    assert all(torch.equal(a, b) for a, b in zip(alone, shared))
    assert not torch.equal(alone[0], epoch(dataset(root, augment), workers=0, epoch_seed=8)[0])  # another epoch, other crops


def test_persistent_workers_replay_an_epoch_as_fresh_ones_do(tmp_path):
    """What exact resume needs: epoch 2 of a loader whose workers lived through epoch 1 equals a new loader's epoch 2."""
    items = dataset(write_image_folder(tmp_path / "data", classes=2, per_class=8), {"crop_scale": 0.3, "hflip": 0.5})
    task, order = ClassificationTask(), list(range(len(items)))
    persistent = make_loader(items, collate=task.collate, batch_size=4, sampler=order, seed=0, workers=2, pin_memory=False)
    epoch(items, workers=2, epoch_seed=1, loader=persistent)
    assert persistent._iterator is not None  # the workers stayed up
    fresh = make_loader(items, collate=task.collate, batch_size=4, sampler=order, seed=0, workers=1, pin_memory=False, persistent=False)
    replayed, resumed = epoch(items, workers=2, epoch_seed=2, loader=persistent), epoch(items, workers=1, epoch_seed=2, loader=fresh)
    assert len(replayed) == 4 and all(torch.equal(a, b) for a, b in zip(replayed, resumed))


def test_an_unreadable_image_in_a_worker_is_one_line_naming_it(tmp_path):
    root = write_image_folder(tmp_path / "data", classes=2, per_class=4)
    broken = sorted((root / "train" / "class1").iterdir())[0]
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError) as raised:
        epoch(dataset(root), workers=2)
    assert str(raised.value) == f"{broken}: cannot read this image (cannot identify image file '{broken}'); remove or replace it"


def test_finetune_with_an_unreadable_image_exits_2_with_its_line(zoo, tmp_path):
    root = write_image_folder(tmp_path / "data", classes=2, per_class=4)
    broken = sorted((root / "val" / "class0").iterdir())[0]
    broken.write_bytes(b"\x89PNG broken")
    result = zoo("finetune", "--recipe", "linear-probe", "--model", "timm:test_resnet", "--no-pretrained", "--image-size", "32",
                 "--data", root, "--workers", "1", "--run-dir", "run")  # fmt: skip
    # the image is found broken when it is first read, after the run's summary block
    errors = [line for line in result.err.splitlines() if line.startswith("zoo: error:")]
    assert result.code == 2 and errors == [result.err.strip().splitlines()[-1]] and "Traceback" not in result.err
    assert str(broken) in errors[0] and "cannot read this image" in errors[0]
    assert not Path("run").exists()  # nothing to resume: the folder is gone


def test_the_default_worker_count_leaves_a_core_for_training(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert (default_workers(1), default_workers(2), default_workers(4), default_workers(16)) == (8, 7, 3, 0)
    assert default_workers(1, items=100) == 0  # starting workers would cost more than they save
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_workers(1) == 0  # a worker would take a core the training process computes on


def test_a_cache_larger_than_shared_memory_is_cut_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr("zoo_core.imagecache._shared_memory_free", lambda: 10_000)
    with caplog.at_level(logging.WARNING, logger="zoo_core.imagecache"):
        cache = SharedImageCache(4, 10**9)
    assert cache.capacity == 5_000
    assert "docker --shm-size" in caplog.text


def test_finetune_with_an_image_cache_trains_as_without(zoo, image_folder):
    common = ("finetune", "--recipe", "linear-probe", "--model", "timm:test_resnet", "--no-pretrained", "--image-size", "32",
              "--data", image_folder, "--set", "stages.0.epochs=2", "--no-cache", "--workers", "1")  # fmt: skip
    assert zoo(*common, "--run-dir", "plain", "--cache-images", "0").code == 0
    assert zoo(*common, "--run-dir", "cached", "--cache-images", "50MB").code == 0
    plain, cached = (torch.load(Path(run, "checkpoints", "last.pt"), weights_only=True)["model_state_dict"] for run in ("plain", "cached"))
    assert all(torch.equal(plain[key], cached[key]) for key in plain)


def test_detection_images_share_the_cache_and_come_back_the_same(tmp_path):
    from zoo_detection.scenes import write_digit_scenes
    from zoo_detection.task import DetectionTask

    write_digit_scenes(tmp_path / "scenes" / "train", 6, seed=0, size=64, digit=20, digits=(3, 7))
    write_digit_scenes(tmp_path / "scenes" / "val", 2, seed=1, size=64, digit=20, digits=(3, 7))
    task = DetectionTask()
    data = task.load_data(tmp_path / "scenes", seed=0, val_fraction=0.2)
    config = InputConfig(size=64)
    plain = task.dataset(data, "train", input_config=config, augment={})
    cached = task.dataset(data, "train", input_config=config, augment={}, image_cache=SharedImageCache(len(data.train), 10**7))
    loader = make_loader(cached, collate=task.collate, batch_size=3, sampler=list(range(len(cached))), seed=0, workers=2, pin_memory=False)
    loader.sampler.set_epoch(0, 0)
    list(batches(loader))
    assert len(cached.cache) == len(data.train) == 6  # filled by the workers
    for index in range(len(plain)):
        (image, target, _), (again, target_again, _) = plain[index], cached[index]
        assert torch.equal(image, again) and torch.equal(target["boxes"], target_again["boxes"])


def test_small_data_sets_are_cached_without_asking_and_large_ones_are_not():
    from zoo_core.engine.setup import auto_cache_budget

    digits = auto_cache_budget(900, InputConfig(size=32))  # the demo's digits: about 5 MB decoded
    assert 0 < digits < 10**7
    assert auto_cache_budget(1_281_167, InputConfig(size=224)) == 0  # ImageNet: streamed
