"""Classification's dataset readers: Tiny ImageNet, ImageNet, CSV lists and image folders.

Each reader turns one layout into a :class:`ClassificationLayout` (class names, labelled
train images, and val images when the layout has them); the task then keeps ``--classes``,
splits train when there is no val part, and checks the result. Readers are tried by
``priority``: Tiny ImageNet and ImageNet folders are also folders of class folders, so the
image-folder reader, which takes any folder, comes last. Nothing here imports torch.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs

from zoo_core.datasets import DatasetReader
from zoo_core.errors import DataError, did_you_mean

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
WNID = re.compile(r"n\d{8}")  # an ImageNet class id (WordNet synset), e.g. n01440764
HEADER_CELLS = frozenset({"path", "filename", "file", "image"})
TASK = "classification"

Items = list[tuple[Path, int]]


@attrs.frozen
class ClassificationLayout:
    """What a classification reader read from a data path."""

    class_names: tuple[str, ...] = attrs.field(converter=tuple)
    train: Items
    val: Items | None  # None: the layout has no val part, and the task splits train by a seeded fraction
    description: str  # for the run record, e.g. "tiny-imagenet: train/ and val/val_annotations.txt"


# --- shared helpers ----------------------------------------------------------------------------------


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _no_images(folder: Path) -> DataError:
    return DataError(f"{folder}: class folder has no images ({', '.join(IMAGE_SUFFIXES[:4])} …); add some or remove it")


def _read_class_folders(root: Path, class_names: Sequence[str] | None = None) -> tuple[list[str], Items]:
    """``root/CLASS/*.png``; with ``class_names`` (a val part), every folder must be one of them."""
    folders = _class_folders(root)
    if not folders:
        raise DataError(f"{root}: no class folders; expected {root}/CLASS_NAME/image.png for each class")
    names = list(class_names) if class_names is not None else [folder.name for folder in folders]
    index = {name: i for i, name in enumerate(names)}
    items: Items = []
    for folder in folders:
        if folder.name not in index:
            raise DataError(f"{folder}: class '{folder.name}' is not in the training classes ({', '.join(names)})")
        images = _images(folder)
        if not images:
            raise _no_images(folder)
        items += [(path, index[folder.name]) for path in images]
    return names, items


def _lines(file: Path) -> Iterator[tuple[str, str]]:
    """``(FILE:LINE, text)`` of each non-blank line, for errors that point at the row."""
    for number, line in enumerate(_text(file).splitlines(), 1):
        if line.strip():
            yield f"{file}:{number}", line.strip()


def _text(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{file}: cannot read this labels file ({exc}); it must be UTF-8 text") from None


def _label_of(text: str, index: dict[str, int], where: str, listed_in: str) -> int:
    if text not in index:
        raise DataError(f"{where}: class '{text}' is not in {listed_in}{did_you_mean(text, index)}")
    return index[text]


def _require(root: Path, part: str, reader: DatasetReader) -> None:
    """A forced reader (``--data-format``) on the wrong layout says what it expected."""
    if not (root / part).exists():
        raise DataError(f"{root}: has no {part}; the {reader.name} layout is {reader.layout}")


def _by_path(items: Items) -> Items:
    return sorted(items, key=lambda item: str(item[0]))


# --- Tiny ImageNet -----------------------------------------------------------------------------------


class TinyImageNetReader:
    """Tiny ImageNet as downloaded: ``wnids.txt``, ``train/WNID/images/``, ``val/images/`` + ``val/val_annotations.txt``.

    Class names are the wnids, sorted; ``words.txt`` (wnid TAB words), when present, only names
    them in log lines.
    """

    name = "tiny-imagenet"
    task = TASK
    layout = "wnids.txt, train/WNID/images/*.JPEG, val/images/*.JPEG with val/val_annotations.txt"
    priority = 10

    def recognises(self, root: Path) -> bool:
        train = root / "train"
        return (root / "wnids.txt").is_file() and train.is_dir() and any((f / "images").is_dir() for f in _class_folders(train))

    def read(self, root: Path) -> ClassificationLayout:
        _require(root, "wnids.txt", self)
        _require(root, "train", self)
        wnids = sorted({line for _, line in _lines(root / "wnids.txt")})
        extra = [f for f in _class_folders(root / "train") if f.name not in wnids]
        if extra:
            raise DataError(f"{extra[0]}: class '{extra[0].name}' is not in {root / 'wnids.txt'}; add it there or remove the folder")
        train: Items = []
        for label, wnid in enumerate(wnids):
            folder = root / "train" / wnid / "images"
            if not folder.is_dir():
                raise DataError(f"{folder}: no such folder, although wnids.txt lists '{wnid}'; add its images or remove it from wnids.txt")
            images = _images(folder)
            if not images:
                raise _no_images(folder)
            train += [(path, label) for path in images]
        val = self._read_val(root / "val", wnids) if (root / "val").is_dir() else None
        words = self._words(root / "words.txt")
        if words:
            log.info("%s: Tiny ImageNet, %d classes (%s …)", root, len(wnids), "; ".join(f"{w} {words.get(w, '?')}" for w in wnids[:3]))
        parts = "train/ and val/val_annotations.txt" if val is not None else "train/"
        return ClassificationLayout(wnids, train, val, f"{self.name}: {parts}")

    @staticmethod
    def _read_val(val_dir: Path, wnids: Sequence[str]) -> Items:
        annotations = val_dir / "val_annotations.txt"
        if not annotations.is_file():
            raise DataError(
                f"{annotations}: missing; it labels val/images/ (filename TAB wnid TAB x TAB y TAB w TAB h); "
                "add it, or remove val/ to split train/"
            )
        index = {wnid: i for i, wnid in enumerate(wnids)}
        items: Items = []
        for where, line in _lines(annotations):
            cells = line.split("\t")
            if len(cells) < 2:
                raise DataError(f"{where}: expected filename TAB wnid TAB x TAB y TAB w TAB h, got {line!r}")
            path = val_dir / "images" / cells[0].strip()
            if not path.is_file():
                raise DataError(f"{where}: no such image {path}")
            items.append((path, _label_of(cells[1].strip(), index, where, "wnids.txt")))
        return _by_path(items)

    @staticmethod
    def _words(file: Path) -> dict[str, str]:
        if not file.is_file():
            return {}
        return dict(line.split("\t", 1) for _, line in _lines(file) if "\t" in line)


# --- ImageNet ----------------------------------------------------------------------------------------


class ImageNetReader:
    """ImageNet (ILSVRC 2012): ``train/WNID/*.JPEG``; ``val/`` in class folders, or flat with a labels file.

    Flat validation images are labelled by Kaggle's ``LOC_val_solution.csv`` in the data folder
    (``ImageId,PredictionString``; the first token of the prediction string is the wnid), or by
    ``val/labels.txt`` / ``val.txt`` rows ``filename label`` (whitespace or comma separated),
    where ``label`` is a wnid or an index into the sorted wnids.
    """

    name = "imagenet"
    task = TASK
    layout = "train/WNID/*.JPEG (n01440764 …), val/WNID/ or flat val/ with LOC_val_solution.csv or val/labels.txt"
    priority = 20

    def recognises(self, root: Path) -> bool:
        train = root / "train"
        folders = _class_folders(train) if train.is_dir() else []
        return bool(folders) and all(WNID.fullmatch(folder.name) for folder in folders)

    def read(self, root: Path) -> ClassificationLayout:
        _require(root, "train", self)
        class_names, train = _read_class_folders(root / "train")
        val_dir = root / "val"
        if not val_dir.is_dir():
            return ClassificationLayout(class_names, train, None, f"{self.name}: train/")
        if _class_folders(val_dir):
            _, val = _read_class_folders(val_dir, class_names)
            return ClassificationLayout(class_names, train, val, f"{self.name}: train/ and val/ folders")
        labels = next((f for f in (root / "LOC_val_solution.csv", val_dir / "labels.txt", root / "val.txt") if f.is_file()), None)
        if labels is None:
            raise DataError(
                f"{val_dir}: flat validation images need labels: LOC_val_solution.csv in {root}, or val/labels.txt or "
                "val.txt rows 'filename label'; or put them in val/WNID/ folders"
            )
        index = {name: i for i, name in enumerate(class_names)}
        by_stem = {path.stem: path for path in _images(val_dir)}
        rows = self._solution_rows(labels) if labels.suffix == ".csv" else self._label_rows(labels)
        val: Items = []
        for where, filename, label in rows:
            path = val_dir / filename if (val_dir / filename).is_file() else by_stem.get(Path(filename).stem)
            if path is None:
                raise DataError(f"{where}: no image '{filename}' in {val_dir}")
            if label.isdigit() and label not in index:
                if int(label) >= len(class_names):
                    raise DataError(f"{where}: class index {label} is out of range (train/ has {len(class_names)} classes)")
                val.append((path, int(label)))
            else:
                val.append((path, _label_of(label, index, where, "train/'s classes")))
        return ClassificationLayout(class_names, train, _by_path(val), f"{self.name}: train/ and val/ labelled by {labels.name}")

    @staticmethod
    def _solution_rows(file: Path) -> Iterator[tuple[str, str, str]]:
        for where, line in _lines(file):
            image_id, _, prediction = line.partition(",")
            if image_id == "ImageId":
                continue
            if not prediction.split():
                raise DataError(f"{where}: expected ImageId,PredictionString (the wnid first), got {line!r}")
            yield where, image_id.strip(), prediction.split()[0]

    @staticmethod
    def _label_rows(file: Path) -> Iterator[tuple[str, str, str]]:
        for where, line in _lines(file):
            cells = [cell for cell in re.split(r"[,\s]+", line) if cell]
            if len(cells) != 2:
                raise DataError(f"{where}: expected 'filename label', got {line!r}")
            yield where, cells[0], cells[1]


# --- CSV and TSV lists -------------------------------------------------------------------------------


class CsvReader:
    """A list of ``path,label`` rows: one ``.csv``/``.tsv`` file (split by the task), or a folder with
    ``train.csv`` and an optional ``val.csv`` (``.tsv``: tab-separated).

    An optional header row starts with ``path``, ``filename``, ``file`` or ``image``; relative
    paths are relative to the list's folder. Class names are train's labels, sorted.
    """

    name = "csv"
    task = TASK
    layout = "a .csv/.tsv of path,label rows, or a folder with train.csv (+ val.csv)"
    priority = 30
    suffixes = (".csv", ".tsv")

    def recognises(self, root: Path) -> bool:
        if root.is_file():
            return root.suffix.lower() in self.suffixes
        return self._list(root, "train") is not None

    def read(self, root: Path) -> ClassificationLayout:
        if root.is_file():
            train_file, val_file = root, None
        else:
            train_file, val_file = self._list(root, "train"), self._list(root, "val")
            if train_file is None:
                raise DataError(f"{root}: no train.csv or train.tsv; expected rows 'path,label'")
        train_rows = list(self._rows(train_file))
        if not train_rows:
            raise DataError(f"{train_file}: no rows; expected 'path,label' per image")
        class_names = sorted({label for _, _, label in train_rows})
        index = {name: i for i, name in enumerate(class_names)}
        train = [(path, index[label]) for _, path, label in train_rows]
        if val_file is None:
            return ClassificationLayout(class_names, train, None, f"{self.name}: {train_file.name}")
        val = [(path, _label_of(label, index, where, f"{train_file.name}'s labels")) for where, path, label in self._rows(val_file)]
        return ClassificationLayout(class_names, train, val, f"{self.name}: {train_file.name} and {val_file.name}")

    def _list(self, folder: Path, part: str) -> Path | None:
        return next((folder / f"{part}{suffix}" for suffix in self.suffixes if (folder / f"{part}{suffix}").is_file()), None)

    @staticmethod
    def _rows(file: Path) -> Iterator[tuple[str, Path, str]]:
        """``(FILE:LINE, image path, label)`` per row; a header row is skipped."""
        delimiter = "\t" if file.suffix.lower() == ".tsv" else ","
        reader = csv.reader(io.StringIO(_text(file), newline=""), delimiter=delimiter)
        first = True
        for cells in reader:
            where = f"{file}:{reader.line_num}"
            cells = [cell.strip() for cell in cells]
            if not any(cells):
                continue
            if first and cells[0].lower() in HEADER_CELLS:
                first = False
                continue
            first = False
            if len(cells) != 2 or not all(cells):
                raise DataError(f"{where}: expected 2 cells, path and label, got {len(cells)}: {delimiter.join(cells)!r}")
            path = Path(cells[0]) if Path(cells[0]).is_absolute() else file.parent / cells[0]
            if not path.is_file():
                raise DataError(f"{where}: no such image {path}")
            yield where, path, cells[1]


# --- image folders -----------------------------------------------------------------------------------


class ImageFolderReader:
    """Folders of class folders: ``train/CLASS/`` and ``val/CLASS/``, ``train/CLASS/`` alone, or ``CLASS/``.

    It takes any folder (the fallback), so that a folder of some other shape gets its precise
    complaint (no class folders, an empty class folder) rather than a list of layouts.
    """

    name = "image-folder"
    task = TASK
    layout = "train/CLASS/*.png and val/CLASS/*.png, or CLASS/*.png"
    priority = 100

    def recognises(self, root: Path) -> bool:
        return root.is_dir()

    def read(self, root: Path) -> ClassificationLayout:
        if not root.is_dir():
            raise DataError(f"{root}: not a folder; the image-folder layout is {self.layout}")
        train_dir, val_dir = root / "train", root / "val"
        if not train_dir.is_dir():
            class_names, items = _read_class_folders(root)
            return ClassificationLayout(class_names, items, None, f"{self.name}: one folder")
        class_names, train = _read_class_folders(train_dir)
        if not val_dir.is_dir():
            return ClassificationLayout(class_names, train, None, f"{self.name}: train/")
        _, val = _read_class_folders(val_dir, class_names)
        return ClassificationLayout(class_names, train, val, f"{self.name}: train/ and val/ folders")


def builtin_readers() -> list[DatasetReader]:
    """Classification's own readers, fresh objects each call (registered by the plugin, never at import)."""
    return [TinyImageNetReader(), ImageNetReader(), CsvReader(), ImageFolderReader()]
