"""Safe checkpoint reading, validation and atomic saving.

Reading always uses ``torch.load(weights_only=True)`` (or safetensors) and never falls back to
unsafe unpickling: a refused file is an error that names the global it wanted. The layouts
found in the wild are understood: a bare state dict, or one nested under ``model_state_dict``,
``state_dict``, ``model`` or ``state_dict_ema``; prefixes such as ``module.`` (DDP),
``_orig_mod.`` (torch.compile) and ``model.`` (Lightning) are stripped on request.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import pickletools
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch

from .errors import CheckpointError, NonFiniteError
from .fileio import atomic_save_with, atomic_write_bytes, sha256_file
from .integrity import FileKind, check_checkpoint_file
from .paths import display

log = logging.getLogger(__name__)

STATE_DICT_KEYS = ("model_state_dict", "state_dict", "model", "state_dict_ema")
KNOWN_PREFIXES = ("module.", "_orig_mod.", "model.")
REQUIRED_TRAINING_KEYS = ("model_state_dict", "epoch", "val_loss")
PROVENANCE_METADATA_KEY = "zoo.provenance"
SAFETENSORS_SUFFIXES = (".safetensors",)


@attrs.frozen
class TensorInfo:
    """Shape and dtype of a tensor, known without reading its data."""

    shape: tuple[int, ...]
    dtype: str

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@attrs.define
class Checkpoint:
    """A loaded checkpoint: the model tensors plus everything saved beside them."""

    path: Path
    format: str  # "torch" or "safetensors"
    layout: str  # "bare" or the key the state dict was found under
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any]

    @property
    def provenance(self) -> dict[str, Any]:
        value = self.meta.get("provenance")
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def class_names(self) -> list[str] | None:
        names = self.provenance.get("class_names")
        return list(names) if names else None

    @property
    def sha256(self) -> str:
        return sha256_file(self.path)

    def tensor_info(self) -> dict[str, TensorInfo]:
        return {key: TensorInfo(tuple(t.shape), str(t.dtype).removeprefix("torch.")) for key, t in self.state_dict.items()}


# --- reading -------------------------------------------------------------------------------------


def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() in SAFETENSORS_SUFFIXES


def _unsafe_globals(path: Path, message: str) -> list[str]:
    found = re.findall(r"GLOBAL ([\w.]+)", message)
    if found:
        return found
    try:  # walk the pickle's opcodes (pickletools executes nothing) for the globals it names
        with open(path, "rb") as handle:
            strings: list[str] = []
            names = []
            for opcode, arg, _ in pickletools.genops(handle):
                if opcode.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(arg, str):
                    strings.append(arg)
        if names:
            return names
    except Exception:
        pass
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # not a zip checkpoint: the message was all there is
        return []


def torch_load(path: Path | str, *, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``; every failure becomes a :class:`CheckpointError`."""
    path = Path(path)
    where = display(path)
    if not path.is_file():
        raise CheckpointError(f"{where}: no such checkpoint file")
    kind = check_checkpoint_file(path)  # foreign or corrupt bytes never reach the unpickler
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and kind is FileKind.TORCH_ZIP)
    except pickle.UnpicklingError as exc:
        names = _unsafe_globals(path, str(exc))
        if names:
            raise CheckpointError(
                f"{where}: refused to load: it needs the global {', '.join(repr(n) for n in names)}, which is not "
                "on the weights-only allowlist and could run code; re-save it from trusted code as a plain state "
                "dict or as safetensors"
            ) from None
        # torch's own text here advises weights_only=False, which is exactly what Zoo never does
        raise CheckpointError(
            f"{where}: its pickle cannot be read with weights_only=True (corrupt, or written by other code); "
            "re-save it from trusted code as a plain state dict or as safetensors"
        ) from None
    except Exception as exc:  # hostile or damaged pickles raise any type (KeyError, struct.error …)
        raise CheckpointError(
            f"{where}: truncated or corrupt checkpoint ({_first_line(exc)}); restore it or save it again"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _safetensors_error(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{display(path)}: broken safetensors file ({_first_line(exc)}); download or export it again")


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise CheckpointError(f"{display(path)}: no such checkpoint file") from None
    except Exception as exc:  # safetensors raises its own SafetensorError for every malformed file
        raise _safetensors_error(path, exc) from None
    return tensors, metadata


def _split_layout(obj: Any, path: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Find the model tensors in a loaded object: (layout, state_dict, other top-level items)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{display(path)}: holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead"
        )
    for key in STATE_DICT_KEYS:
        nested = obj.get(key)
        if isinstance(nested, Mapping) and nested and all(isinstance(v, torch.Tensor) for v in nested.values()):
            return key, dict(nested), {k: v for k, v in obj.items() if k != key}
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and len(tensors) == len(obj):
        return "bare", tensors, {}
    raise CheckpointError(
        f"{display(path)}: no model tensors found (looked for a bare state dict and the keys "
        f"{', '.join(STATE_DICT_KEYS)}); top-level keys are {', '.join(map(str, list(obj)[:8]))}"
    )


def strip_prefixes(state_dict: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``) present on every key."""
    result = dict(state_dict)
    changed = True
    while changed and result:
        changed = False
        for prefix in prefixes:
            if all(key.startswith(prefix) for key in result):
                result = {key[len(prefix) :]: value for key, value in result.items()}
                changed = True
    return result


def read_checkpoint(path: Path | str, *, strip: Iterable[str] = (), mmap: bool = False) -> Checkpoint:
    """Read a ``.pt``/``.pth``/``.bin``/``.safetensors`` file safely.

    :param strip: prefixes to remove when every key carries them (see :data:`KNOWN_PREFIXES`).
    :param mmap: memory-map torch files so tensors are read only when touched.
    """
    path = Path(path)
    if _is_safetensors(path):
        tensors, metadata = read_safetensors(path)
        meta: dict[str, Any] = {"metadata": metadata}
        if PROVENANCE_METADATA_KEY in metadata:
            try:
                meta["provenance"] = json.loads(metadata[PROVENANCE_METADATA_KEY])
            except ValueError:
                log.warning("%s: provenance metadata is not valid JSON; ignored", display(path))
        return Checkpoint(path, "safetensors", "bare", strip_prefixes(tensors, strip), meta)
    obj = torch_load(path, mmap=mmap)
    layout, state_dict, meta = _split_layout(obj, path)
    return Checkpoint(path, "torch", layout, strip_prefixes(state_dict, strip), meta)


def read_tensor_info(path: Path | str, *, strip: Iterable[str] = ()) -> tuple[dict[str, TensorInfo], dict[str, Any]]:
    """Shapes and dtypes of a checkpoint's model tensors without reading tensor data.

    Safetensors files are described by their header alone; torch files are memory-mapped, so
    only the pickled structure is read.

    :return: ``(tensor info by key, other top-level metadata)``.
    """
    path = Path(path)
    if _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = dict(handle.metadata() or {})
                info = {}
                for key in handle.keys():
                    tensor_slice = handle.get_slice(key)
                    info[key] = TensorInfo(tuple(tensor_slice.get_shape()), _safetensors_dtype(tensor_slice.get_dtype()))
        except FileNotFoundError:
            raise CheckpointError(f"{display(path)}: no such checkpoint file") from None
        except Exception as exc:
            raise _safetensors_error(path, exc) from None
        meta: dict[str, Any] = {"metadata": metadata}
        if PROVENANCE_METADATA_KEY in metadata:
            try:
                meta["provenance"] = json.loads(metadata[PROVENANCE_METADATA_KEY])
            except ValueError:
                pass
        return strip_prefixes(info, strip), meta
    checkpoint = read_checkpoint(path, strip=strip, mmap=True)
    return checkpoint.tensor_info(), checkpoint.meta


_SAFETENSORS_DTYPES = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


def _safetensors_dtype(code: str) -> str:
    return _SAFETENSORS_DTYPES.get(code, code.lower())


# --- validation ----------------------------------------------------------------------------------


def nonfinite_tensors(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or infinity."""
    return [
        key
        for key, tensor in state_dict.items()
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all())
    ]


def check_finite(state_dict: Mapping[str, torch.Tensor], where: str) -> None:
    bad = nonfinite_tensors(state_dict)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise NonFiniteError(
            f"{where}: NaN or infinite values in {', '.join(bad[:3])}{more}; use an earlier checkpoint of that run",
            tuple(bad),
        )


def training_metadata_warnings(where: str, layout: str, meta: Mapping[str, Any], *, min_epochs: int = 50) -> list[str]:
    """Seed 000's checks that need no tensor data: required keys, enough training.

    :raises CheckpointError: when a required key is missing.
    :return: warnings (e.g. trained for fewer than ``min_epochs`` epochs).
    """
    if layout != "model_state_dict":
        raise CheckpointError(f"{where}: a training checkpoint needs 'model_state_dict' (found layout '{layout}')")
    missing = [key for key in REQUIRED_TRAINING_KEYS[1:] if key not in meta]
    if missing:
        raise CheckpointError(f"{where}: missing required key(s) {', '.join(missing)}; save them with the weights")
    epoch = meta.get("epoch")
    if isinstance(epoch, (int, float)) and epoch < min_epochs:
        return [f"{where}: trained for only {epoch} epochs (< {min_epochs}); its features may not be stable yet"]
    return []


def validate_training_checkpoint(checkpoint: Checkpoint, *, min_epochs: int = 50) -> list[str]:
    """Seed 000's checks for a transfer source: required keys, finite tensors, enough training.

    :raises CheckpointError: when a required key is missing or a tensor is not finite.
    :return: warnings (e.g. trained for fewer than ``min_epochs`` epochs).
    """
    where = display(checkpoint.path)
    warnings = training_metadata_warnings(where, checkpoint.layout, checkpoint.meta, min_epochs=min_epochs)
    check_finite(checkpoint.state_dict, where)
    return warnings


# --- saving --------------------------------------------------------------------------------------


def save_checkpoint(content: Mapping[str, Any], path: Path | str) -> Path:
    """Save with ``torch.save`` atomically: the previous file stays intact until the new one is complete."""
    path = Path(path)
    atomic_save_with(path, lambda handle: torch.save(dict(content), handle))
    return path


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: Path | str, provenance: Mapping[str, Any] | None = None
) -> Path:
    """Write tensors as safetensors (atomically), with the provenance as JSON metadata."""
    from safetensors.torch import save

    path = Path(path)
    metadata = {"format": "pt"}
    if provenance is not None:
        metadata[PROVENANCE_METADATA_KEY] = json.dumps(provenance, sort_keys=True, default=str)
    # safetensors refuses shared or non-contiguous storage; exports own their memory
    owned = {key: tensor.detach().cpu().contiguous().clone() for key, tensor in tensors.items()}
    atomic_write_bytes(path, save(owned, metadata=metadata))
    return path
