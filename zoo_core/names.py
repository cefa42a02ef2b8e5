"""The name grammar: ``[source:]name[.tag][@revision]``.

Examples::

    timm:resnet50.a1_in1k              source timm, name resnet50, tag a1_in1k
    torchvision:resnet50.IMAGENET1K_V2 source torchvision, tag IMAGENET1K_V2
    hf-hub:timm/resnet50.a1_in1k@abc   source hf-hub, name timm/resnet50.a1_in1k, revision abc
    file:./runs/exp1/best.pt           source file, the rest is a path
    maxsight/t5                        no source: an alias, a tier (family/tier) or a bare name
    timm:resnet18+detector/fcos        composed: a tier's neck and heads over another backbone

Whether the part after the first dot is a tag depends on the source (hf-hub repository ids
contain dots), so :func:`parse_name` takes ``tagged`` and ``revisioned`` flags; the registry
passes the flags its sources declare.
"""

from __future__ import annotations

import re

import attrs

from .errors import ZooError

COMPOSE = "+"  # BACKBONE+TIER
_SOURCE_PREFIX = re.compile(r"^(?P<source>[a-z][a-z0-9_-]*):(?!//)(?P<body>.+)$")
_NAME_BODY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_\-./]*$")


@attrs.frozen
class ModelRef:
    """A parsed model name. ``str(ref)`` gives it back in canonical form."""

    name: str
    source: str | None = None
    tag: str | None = None
    revision: str | None = None

    @property
    def base(self) -> str:
        """The name without source and revision, with its tag (``resnet50.a1_in1k``)."""
        return f"{self.name}.{self.tag}" if self.tag else self.name

    def __str__(self) -> str:
        text = self.base
        if self.source:
            text = f"{self.source}:{text}"
        if self.revision:
            text = f"{text}@{self.revision}"
        return text


def split_source(text: str) -> tuple[str | None, str]:
    """Split ``source:body``; names without a source prefix give ``(None, text)``."""
    match = _SOURCE_PREFIX.match(text.strip())
    if match:
        return match["source"], match["body"]
    return None, text.strip()


def parse_name(text: str, *, tagged: bool = True, revisioned: bool = True) -> ModelRef:
    """Parse ``[source:]name[.tag][@revision]`` into a :class:`ModelRef`.

    :param text: what the user typed.
    :param tagged: the first ``.`` separates a tag (true for timm and torchvision names).
    :param revisioned: ``@`` separates a revision (false for file paths).
    :raises ZooError: for an empty or malformed name.
    """
    if not text or not text.strip():
        raise ZooError("empty model name; run `zoo list` to see what is registered")
    source, body = split_source(text)
    revision = None
    if revisioned and "@" in body:
        body, revision = body.rsplit("@", 1)
        if not revision:
            raise ZooError(f"'{text}': nothing after '@'; give a revision such as a commit sha or 'main'")
    if not body:
        raise ZooError(f"'{text}': no model name after '{source}:'")
    if not revisioned and not tagged:  # file paths: anything goes
        return ModelRef(name=body, source=source)
    if not _NAME_BODY.match(body):
        raise ZooError(f"'{text}': model names use letters, digits, '_', '-', '.', '/'")
    tag = None
    if tagged and "." in body:
        body, tag = body.split(".", 1)
        if not body or not tag:
            raise ZooError(f"'{text}': expected name.tag, e.g. resnet50.a1_in1k")
    return ModelRef(name=body, source=source, tag=tag, revision=revision)


def is_tier_name(text: str) -> bool:
    """``family/tier`` with no source prefix and no file-like suffix."""
    source, body = split_source(text)
    return source is None and body.count("/") == 1 and not body.startswith((".", "/")) and "." not in body


WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def looks_like_path(text: str) -> bool:
    """True for names that are evidently files: they end with a weights suffix."""
    return text.lower().endswith(WEIGHT_SUFFIXES)
