"""Dataset readers: classification reads Tiny ImageNet, ImageNet, CSV/TSV lists and image folders,
recognised by their layout or forced with ``--data-format``; plugins add their own readers.

Layouts are written per test with a few real 16 px PNG/JPEG files. One in-process run of
``zoo finetune --data-format csv`` (timm's ``test_resnet`` at 32 px, one epoch) shows the
reader's name reaching the run record and the provenance, and ``zoo eval`` reading it back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import assert_one_error, write_image_folder
from zoo_classification.readers import ClassificationLayout, builtin_readers
from zoo_classification.task import ClassificationTask

from zoo_core import hookimpl
from zoo_core.datasets import DatasetReader, pick_reader
from zoo_core.errors import DataError, PluginError

WNIDS = ("n01443537", "n01629819", "n02085620")
WORDS = {"n01443537": "goldfish", "n01629819": "European fire salamander", "n02085620": "Chihuahua"}
FAST = ("--no-pretrained", "--image-size", "32", "--set", "batch_size=8", "--set", "stages.0.epochs=1")


# --- layouts -------------------------------------------------------------------------------------------


def write_image(path: Path, label: int) -> Path:
    """A 16 px image whose colour is its class (the suffix picks the format: .png, .JPEG …)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    colour = [(220, 40, 40), (40, 200, 40), (40, 40, 220)][label % 3]
    Image.new("RGB", (16, 16), colour).save(path, format="JPEG" if path.suffix.lower() in (".jpeg", ".jpg") else "PNG")
    return path


def write_tiny_imagenet(root: Path, per_class: int = 3) -> Path:
    """Tiny ImageNet's layout; val images are named val_K and labelled only by val_annotations.txt."""
    (root / "train").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(reversed(WNIDS)) + "\n")  # not sorted: class names are
    (root / "words.txt").write_text("".join(f"{wnid}\t{words}\n" for wnid, words in WORDS.items()))
    for label, wnid in enumerate(WNIDS):
        for index in range(per_class):
            write_image(root / "train" / wnid / "images" / f"{wnid}_{index}.JPEG", label)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    rows = []
    for index in range(2 * len(WNIDS)):
        label = (index * 2) % len(WNIDS)  # labels not in file order
        write_image(root / "val" / "images" / f"val_{index}.JPEG", label)
        rows.append(f"val_{index}.JPEG\t{WNIDS[label]}\t0\t0\t15\t15")
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return root


def write_imagenet_train(root: Path, per_class: int = 3) -> Path:
    for label, wnid in enumerate(WNIDS):
        for index in range(per_class):
            write_image(root / "train" / wnid / f"{wnid}_{index}.JPEG", label)
    return root


def write_flat_val(root: Path) -> dict[str, str]:
    """Six flat val images; returns image stem -> wnid."""
    truth = {}
    for index in range(6):
        stem = f"ILSVRC2012_val_{index + 1:08d}"
        label = (index * 2) % len(WNIDS)
        write_image(root / "val" / f"{stem}.JPEG", label)
        truth[stem] = WNIDS[label]
    return truth


def write_flat_images(root: Path, per_class: int = 4) -> list[tuple[str, str]]:
    """``root/img/K.png`` of three classes; returns (relative path, label) rows."""
    rows = []
    for index in range(3 * per_class):
        label = index % 3
        write_image(root / "img" / f"{index:02d}.png", label)
        rows.append((f"img/{index:02d}.png", ["bird", "cat", "dog"][label]))
    return rows


def labels_of(layout_items: list[tuple[Path, int]], class_names: tuple[str, ...]) -> dict[str, str]:
    return {path.stem: class_names[label] for path, label in layout_items}


def reader(name: str) -> DatasetReader:
    return next(r for r in builtin_readers() if r.name == name)


def load(root: Path, **kwargs) -> object:
    return ClassificationTask().load_data(root, seed=0, val_fraction=0.25, **kwargs)


# --- each reader ---------------------------------------------------------------------------------------


def test_tiny_imagenet_labels_val_images_from_val_annotations(tmp_path: Path) -> None:
    root = write_tiny_imagenet(tmp_path / "tiny")
    layout = reader("tiny-imagenet").read(root)
    assert layout.class_names == tuple(sorted(WNIDS))
    assert len(layout.train) == 9 and {label for _, label in layout.train} == {0, 1, 2}
    assert labels_of(layout.val, layout.class_names) == {f"val_{i}": WNIDS[(i * 2) % 3] for i in range(6)}
    assert layout.description == "tiny-imagenet: train/ and val/val_annotations.txt"


def test_tiny_imagenet_val_annotation_naming_an_unknown_wnid_names_its_line(tmp_path: Path) -> None:
    root = write_tiny_imagenet(tmp_path / "tiny")
    rows = (root / "val" / "val_annotations.txt").read_text().splitlines()
    rows[2] = rows[2].replace(WNIDS[1], "n01443538")
    (root / "val" / "val_annotations.txt").write_text("\n".join(rows))
    with pytest.raises(DataError, match=r"val_annotations.txt:3: class 'n01443538' is not in wnids.txt - did you mean 'n01443537'"):
        reader("tiny-imagenet").read(root)


def test_imagenet_flat_val_is_labelled_by_kaggles_loc_val_solution(tmp_path: Path) -> None:
    root = write_imagenet_train(tmp_path / "imagenet")
    truth = write_flat_val(root)
    rows = [f"{stem},{wnid} 1 2 14 15 {wnid} 0 0 8 8" for stem, wnid in truth.items()]
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")
    layout = reader("imagenet").read(root)
    assert layout.class_names == WNIDS and len(layout.train) == 9
    assert labels_of(layout.val, layout.class_names) == truth
    assert layout.description == "imagenet: train/ and val/ labelled by LOC_val_solution.csv"


def test_imagenet_flat_val_is_labelled_by_val_labels_txt_with_wnids_or_indices(tmp_path: Path) -> None:
    root = write_imagenet_train(tmp_path / "imagenet")
    truth = write_flat_val(root)
    rows = [f"{stem}.JPEG {wnid}" if i % 2 else f"{stem}.JPEG,{WNIDS.index(wnid)}" for i, (stem, wnid) in enumerate(truth.items())]
    (root / "val" / "labels.txt").write_text("\n".join(rows) + "\n")
    layout = reader("imagenet").read(root)
    assert labels_of(layout.val, layout.class_names) == truth
    assert layout.description == "imagenet: train/ and val/ labelled by labels.txt"


def test_imagenet_flat_val_without_labels_says_which_files_label_it(tmp_path: Path) -> None:
    root = write_imagenet_train(tmp_path / "imagenet")
    write_flat_val(root)
    with pytest.raises(DataError, match="flat validation images need labels: LOC_val_solution.csv"):
        reader("imagenet").read(root)


def test_imagenet_val_in_class_folders(tmp_path: Path) -> None:
    root = write_imagenet_train(tmp_path / "imagenet")
    write_image(root / "val" / WNIDS[2] / "v.JPEG", 2)
    layout = reader("imagenet").read(root)
    assert labels_of(layout.val, layout.class_names) == {"v": WNIDS[2]}


@pytest.mark.parametrize("header", ["path,label\n", "filename,label\n", ""], ids=["path-header", "filename-header", "no-header"])
def test_csv_rows_are_path_and_label_relative_to_the_file(tmp_path: Path, header: str) -> None:
    rows = write_flat_images(tmp_path / "data")
    listing = tmp_path / "data" / "images.csv"
    listing.write_text(header + "".join(f"{path},{label}\n" for path, label in rows))
    layout = reader("csv").read(listing)
    assert layout.class_names == ("bird", "cat", "dog")
    assert {(path, layout.class_names[label]) for path, label in layout.train} == {(tmp_path / "data" / p, label) for p, label in rows}
    assert layout.val is None and layout.description == "csv: images.csv"


def test_tsv_is_tab_separated_and_a_folder_may_hold_train_and_val_lists(tmp_path: Path) -> None:
    rows = write_flat_images(tmp_path / "data")
    (tmp_path / "data" / "train.tsv").write_text("".join(f"{path}\t{label}\n" for path, label in rows[:9]))
    (tmp_path / "data" / "val.tsv").write_text("image\tlabel\n" + "".join(f"{tmp_path / 'data' / path}\t{label}\n" for path, label in rows[9:]))
    layout = reader("csv").read(tmp_path / "data")
    assert len(layout.train) == 9 and [layout.class_names[label] for _, label in layout.val] == [label for _, label in rows[9:]]
    assert layout.description == "csv: train.tsv and val.tsv"


def test_csv_row_with_three_cells_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    rows = write_flat_images(tmp_path / "data")
    listing = tmp_path / "data" / "images.csv"
    listing.write_text("path,label\n" + f"{rows[0][0]},{rows[0][1]}\n" + f"{rows[1][0]},{rows[1][1]},extra\n")
    with pytest.raises(DataError, match=rf"^{listing}:3: expected 2 cells, path and label, got 3"):
        reader("csv").read(listing)


def test_csv_row_naming_a_missing_image_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    write_flat_images(tmp_path / "data")
    listing = tmp_path / "data" / "images.csv"
    listing.write_text("img/00.png,bird\nimg/99.png,cat\n")
    with pytest.raises(DataError, match=rf"^{listing}:2: no such image .*99.png"):
        reader("csv").read(listing)


def test_image_folder_reads_todays_layouts(tmp_path: Path) -> None:
    split = reader("image-folder").read(write_image_folder(tmp_path / "split", classes=2, per_class=3))
    one = reader("image-folder").read(write_image_folder(tmp_path / "one", classes=2, per_class=3, split=False))
    assert split.class_names == one.class_names == ("class0", "class1")
    assert split.description == "image-folder: train/ and val/ folders" and len(split.val) == 4
    assert one.description == "image-folder: one folder" and one.val is None


# --- the task over a layout ------------------------------------------------------------------------------


def test_the_task_splits_a_layout_without_val_and_describes_what_it_read(tmp_path: Path) -> None:
    rows = write_flat_images(tmp_path / "data")
    listing = tmp_path / "data" / "images.csv"
    listing.write_text("".join(f"{path},{label}\n" for path, label in rows))
    data = load(listing)
    assert data.class_names == ("bird", "cat", "dog") and len(data.train) == 9 and len(data.val) == 3
    assert data.split == "csv: images.csv split 75%/25% (seed 0)"


def test_the_task_keeps_classes_of_any_layout(tmp_path: Path) -> None:
    data = load(write_tiny_imagenet(tmp_path / "tiny"), classes=[WNIDS[2], WNIDS[0]])
    assert data.class_names == (WNIDS[2], WNIDS[0])
    assert {label for _, label in data.val} == {0, 1} and len(data.train) == 6


# --- which reader reads a path ----------------------------------------------------------------------------


def test_builtin_readers_are_registered_in_detection_order(registry) -> None:
    assert [r.name for r in registry.readers_for("classification")] == ["tiny-imagenet", "imagenet", "csv", "image-folder"]
    assert registry.readers_for("detection") == []
    assert registry.dataset_readers["csv"].plugin == "classification"


def test_a_tiny_imagenet_folder_is_not_read_as_an_image_folder(registry, tmp_path: Path) -> None:
    root = write_tiny_imagenet(tmp_path / "tiny")
    readers = registry.readers_for("classification")
    assert reader("image-folder").recognises(root) and reader("imagenet").recognises(root)  # it is both …
    assert pick_reader(readers, root, None, "classification").name == "tiny-imagenet"  # … but the specific one wins
    assert load(root).split == "tiny-imagenet: train/ and val/val_annotations.txt"


def test_each_layout_is_recognised(registry, tmp_path: Path) -> None:
    rows = write_flat_images(tmp_path / "csv")
    (tmp_path / "csv" / "train.csv").write_text("".join(f"{path},{label}\n" for path, label in rows))
    paths = {
        "imagenet": write_imagenet_train(tmp_path / "imagenet"),
        "csv": tmp_path / "csv" / "train.csv",
        "image-folder": write_image_folder(tmp_path / "folders", classes=2, per_class=2),
    }
    readers = registry.readers_for("classification")
    assert {name: pick_reader(readers, path, None, "classification").name for name, path in paths.items()} == {
        name: name for name in paths
    }
    assert pick_reader(readers, tmp_path / "csv", None, "classification").name == "csv"  # a folder holding train.csv


def test_data_format_forces_a_reader(registry, tmp_path: Path) -> None:
    root = write_imagenet_train(tmp_path / "imagenet")
    write_image(root / "val" / WNIDS[0] / "v.JPEG", 0)
    forced = pick_reader(registry.readers_for("classification"), root, "image-folder", "classification")
    assert forced.name == "image-folder"
    assert load(root, reader=forced).split == "image-folder: train/ and val/ folders"
    assert load(root).split == "imagenet: train/ and val/ folders"


def test_a_forced_reader_on_another_layout_says_what_it_expects(tmp_path: Path) -> None:
    root = write_imagenet_train(tmp_path / "imagenet")
    with pytest.raises(DataError, match="has no wnids.txt; the tiny-imagenet layout is wnids.txt, train/WNID/images"):
        load(root, reader=reader("tiny-imagenet"))


def test_an_unknown_data_format_suggests_a_close_name(registry, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown classification data format 'tiny-imgnet' - did you mean 'tiny-imagenet'\?"):
        pick_reader(registry.readers_for("classification"), tmp_path, "tiny-imgnet", "classification")


def test_a_path_matching_no_layout_lists_every_reader_with_its_layout(registry, tmp_path: Path) -> None:
    (tmp_path / "images.txt").write_text("not a layout")
    with pytest.raises(DataError) as caught:
        pick_reader(registry.readers_for("classification"), tmp_path / "images.txt", None, "classification")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'images.txt'}: matches no classification data layout; readers: tiny-imagenet (wnids.txt")
    assert "csv (a .csv/.tsv" in message and "image-folder (train/CLASS" in message
    assert message.endswith("pass --data-format NAME to force one")


def test_a_missing_path_is_no_such_data_folder_or_file(registry, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: no such data folder or file$"):
        pick_reader(registry.readers_for("classification"), tmp_path / "nowhere", None, "classification")


# --- readers from other plugins ------------------------------------------------------------------------------


class NumberedReader:
    """A third-party layout: ``labels.json`` mapping image file names to class names."""

    name = "numbered"
    task = "classification"
    layout = "labels.json and its images"
    priority = 5

    def recognises(self, root: Path) -> bool:
        return (root / "labels.json").is_file()

    def read(self, root: Path) -> ClassificationLayout:
        labels = json.loads((root / "labels.json").read_text())
        names = sorted(set(labels.values()))
        items = [(root / file, names.index(label)) for file, label in sorted(labels.items())]
        return ClassificationLayout(names, items, None, "numbered: labels.json")


class NumberedPlugin:
    @hookimpl
    def zoo_register_datasets(self, register) -> None:
        register(NumberedReader())


def write_numbered(root: Path) -> Path:
    labels = {f"{index}.png": ["a", "b"][index % 2] for index in range(8)}
    for file, label in labels.items():
        write_image(root / file, ["a", "b"].index(label))
    (root / "labels.json").write_text(json.dumps(labels))
    return root


def test_a_plugins_reader_joins_the_builtin_ones_and_reads_its_layout(make_registry, tmp_path: Path) -> None:
    from zoo_core.engine.api import plan_run
    from zoo_core.engine.options import RunOptions

    registry = make_registry(NumberedPlugin())
    assert [r.name for r in registry.readers_for("classification")][:2] == ["numbered", "tiny-imagenet"]
    assert registry.dataset_readers["numbered"].plugin == "throwaway-0"
    root = write_numbered(tmp_path / "numbered")
    plan = plan_run(RunOptions(recipe="linear-probe", model="timm:test_resnet", data=root, run_dir=tmp_path / "run"), registry=registry)
    assert plan.data.split == "numbered: labels.json split 80%/20% (seed 0)" and plan.data.class_names == ("a", "b")
    assert plan.record["data_format"] == "numbered"


def test_a_reader_lacking_the_protocol_is_refused_naming_the_plugin(make_registry) -> None:
    class Incomplete:
        name, task = "half", "classification"

    class HalfPlugin:
        @hookimpl
        def zoo_register_datasets(self, register) -> None:
            register(Incomplete())

    with pytest.raises(PluginError, match="plugin 'throwaway-0' registered dataset reader 'half' that lacks layout, priority, recognises, read"):
        make_registry(HalfPlugin()).readers_for("classification")


# --- the command line ---------------------------------------------------------------------------------------


@pytest.fixture
def csv_list(tmp_path: Path) -> Path:
    """``images.csv`` over 24 real images of three classes in one folder (no class folders)."""
    folder = write_image_folder(tmp_path / "flat", classes=3, per_class=8, split=False)
    rows = [f"{path.relative_to(folder)},{path.parent.name}" for path in sorted(folder.rglob("*.png"))]
    listing = folder / "images.csv"
    listing.write_text("path,label\n" + "\n".join(rows) + "\n")
    return listing


def test_finetune_with_data_format_csv_records_the_reader_and_eval_reads_it_back(zoo, csv_list: Path) -> None:
    result = zoo("finetune", "--recipe", "linear-probe", "--model", "timm:test_resnet", "--data", csv_list,
                 "--data-format", "csv", "--run-dir", "run", *FAST)  # fmt: skip
    assert result.code == 0, result
    record = json.loads(Path("run/run.json").read_text())
    provenance = json.loads(Path("run/provenance.json").read_text())
    assert record["data_format"] == "csv" and record["classes"] == ["class0", "class1", "class2"]
    assert provenance["data"]["format"] == "csv" and provenance["data"]["split"] == "csv: images.csv split 80%/20% (seed 0)"
    checkpoint = torch.load("run/checkpoints/last.pt", map_location="cpu", weights_only=True)
    assert checkpoint["provenance"]["data"]["format"] == "csv"
    evaluated = zoo("eval", "run/checkpoints/last.pt", "--data", csv_list, "--device", "cpu", "--json")
    assert evaluated.code == 0, evaluated
    assert "accuracy" in json.loads(evaluated.out)


def test_finetune_with_an_unknown_data_format_is_one_line(zoo, csv_list: Path) -> None:
    result = zoo("finetune", "--recipe", "linear-probe", "--model", "timm:test_resnet", "--data", csv_list,
                 "--data-format", "cvs", "--run-dir", "run", *FAST)  # fmt: skip
    assert_one_error(result, "--data-format: unknown classification data format 'cvs'", "did you mean 'csv'", "image-folder")
    assert not Path("run").exists()


def test_data_format_for_a_task_without_readers_is_one_line(zoo, tmp_path: Path) -> None:
    data = write_image_folder(tmp_path / "folders", classes=2, per_class=2)
    result = zoo("finetune", "--recipe", "linear-probe", "--task", "detection", "--model", "timm:test_resnet", "--data", data,
                 "--data-format", "csv", "--run-dir", "run", *FAST)  # fmt: skip
    assert_one_error(result, "--data-format applies to tasks with data readers (classification)", "task 'detection'")
    assert not Path("run").exists()


def test_eval_reads_the_data_with_the_reader_the_run_recorded(zoo, tmp_path: Path) -> None:
    # a folder that is both an image folder and a csv folder: auto-detection would pick csv (other class names)
    folder = write_image_folder(tmp_path / "both", classes=3, per_class=8, split=False)
    rows = [f"{path.relative_to(folder)},{['bird', 'cat', 'dog'][int(path.parent.name[-1])]}" for path in sorted(folder.rglob("*.png"))]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    result = zoo("finetune", "--recipe", "linear-probe", "--model", "timm:test_resnet", "--data", folder,
                 "--data-format", "image-folder", "--run-dir", "run", *FAST)  # fmt: skip
    assert result.code == 0, result
    assert json.loads(Path("run/run.json").read_text())["data_format"] == "image-folder"
    assert zoo("eval", "run/checkpoints/last.pt", "--data", folder, "--device", "cpu", "--json").code == 0
    assert_one_error(
        zoo("eval", "run/checkpoints/last.pt", "--data", folder, "--device", "cpu", "--data-format", "csv"),
        "classes bird, cat, dog differ from the checkpoint's class0, class1, class2",
    )
