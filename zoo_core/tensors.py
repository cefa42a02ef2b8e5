"""Where the tensors of a transfer come from: a file, a state dict, or a module.

A :class:`TensorSource` knows every tensor's shape and dtype before any data is read — from a
safetensors header, or from a torch file memory-mapped once, whose tensors are then read only
when :meth:`TensorSource.load` hands them out — plus what the file says about itself (its
provenance, class names and the other top-level entries). A source built from a model on the
meta device has shapes and no data: it can be planned from, not applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import torch
from torch import nn

from .checkpoint import KNOWN_PREFIXES, TensorInfo, read_checkpoint, read_tensor_info, training_metadata_warnings
from .errors import TransferError
from .fileio import sha256_file
from .paths import display

if TYPE_CHECKING:
    from .specs import ResolvedModel


def _info(state: Mapping[str, torch.Tensor]) -> dict[str, TensorInfo]:
    return {key: TensorInfo(tuple(tensor.shape), str(tensor.dtype).removeprefix("torch.")) for key, tensor in state.items()}


@attrs.define
class TensorSource:
    """Tensor shapes now, tensor data on demand; see the module docstring."""

    name: str  # what reports call the source
    info: dict[str, TensorInfo]
    path: Path | None = None
    layout: str = "bare"  # the key the state dict was found under in the file
    meta: dict[str, Any] = attrs.field(factory=dict)  # the file's other top-level entries
    spec: ResolvedModel | None = None  # when the source is a registry name
    class_names: tuple[str, ...] | None = None
    strip: tuple[str, ...] = KNOWN_PREFIXES
    sha256: str | None = None  # when known without reading the file again (a verified download)
    _tensors: Mapping[str, torch.Tensor] | None = None
    _digest: str | None = None

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_file(
        cls,
        path: Path | str,
        *,
        strip: tuple[str, ...] = KNOWN_PREFIXES,
        name: str | None = None,
        spec: ResolvedModel | None = None,
        sha256: str | None = None,
    ) -> TensorSource:
        """Describe a checkpoint or weights file; torch files are memory-mapped once, here."""
        path = Path(path)
        if path.suffix.lower() == ".safetensors":
            info, meta = read_tensor_info(path, strip=strip)
            tensors, layout = None, "bare"
        else:
            checkpoint = read_checkpoint(path, strip=strip, mmap=True)
            info, meta, tensors, layout = checkpoint.tensor_info(), checkpoint.meta, checkpoint.state_dict, checkpoint.layout
        provenance = meta.get("provenance") if isinstance(meta.get("provenance"), Mapping) else {}
        classes = provenance.get("class_names") or (spec.class_names if spec is not None else None)
        return cls(
            name or (spec.name if spec is not None else display(path)),
            info,
            path=path,
            layout=layout,
            meta=dict(meta),
            spec=spec,
            class_names=tuple(classes) if classes else None,
            strip=tuple(strip),
            sha256=sha256,
            tensors=tensors,
        )

    @classmethod
    def from_state_dict(cls, state: Mapping[str, torch.Tensor], name: str = "state dict") -> TensorSource:
        return cls(name, _info(state), tensors=dict(state))

    @classmethod
    def from_module(cls, module: nn.Module, name: str | None = None) -> TensorSource:
        """A model's tensors (shapes only when it lives on the meta device)."""
        spec = getattr(module, "zoo_spec", None)
        state = module.state_dict()
        on_meta = any(tensor.is_meta for tensor in state.values())
        return cls(
            name or (spec.name if spec is not None else type(module).__name__),
            _info(state),
            spec=spec,
            class_names=spec.class_names if spec is not None else None,
            tensors=None if on_meta else state,
        )

    # -- what it says about itself ---------------------------------------------------------------------

    @property
    def provenance(self) -> dict[str, Any]:
        value = self.meta.get("provenance")
        return dict(value) if isinstance(value, Mapping) else {}

    @property
    def model(self) -> str | None:
        """The registry name of the architecture these tensors belong to, when known."""
        if self.spec is not None and self.spec.source != "file":
            return self.spec.name
        return self.provenance.get("model") or None

    @property
    def has_data(self) -> bool:
        return self._tensors is not None or self.path is not None

    def digest(self) -> str | None:
        """The file's sha256 (read once, then remembered); ``None`` for tensors in memory."""
        if self.sha256 is not None:
            return self.sha256
        if self.path is not None and self._digest is None:
            self._digest = sha256_file(self.path)
        return self._digest

    def training_warnings(self, *, min_epochs: int) -> list[str]:
        """Seed 000's checks of a training checkpoint (keys, epochs); finiteness is checked on load."""
        if self.path is None or self.layout != "model_state_dict":
            return []
        return training_metadata_warnings(display(self.path), self.layout, self.meta, min_epochs=min_epochs)

    # -- the data --------------------------------------------------------------------------------------

    def load(self) -> Mapping[str, torch.Tensor]:
        """Every tensor, reading a safetensors file now (torch files are already mapped)."""
        if self._tensors is None:
            if self.path is None:
                raise TransferError(
                    f"{self.name} has shapes but no weights to carry (it was never trained or saved); "
                    "plan with it, or give a checkpoint file instead"
                )
            self._tensors = read_checkpoint(self.path, strip=self.strip, mmap=True).state_dict
        return self._tensors
