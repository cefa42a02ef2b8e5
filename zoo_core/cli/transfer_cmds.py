"""``zoo transfer`` and ``zoo export``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..errors import ZooError
from .common import parse_classes, print_json, registry_for


def parse_require(items: list[str]) -> dict[str, float]:
    policy = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not sep or not name or not 0 <= fraction <= 1:
            raise ZooError(f"--require {item!r}: expected GROUP=FRACTION with a fraction in [0, 1], e.g. backbone=1.0")
        policy[name] = fraction
    return policy


def rules_from_args(args: Any, registry: Any) -> Any:
    from ..specs import SpecValueError, TransferRules

    rules = TransferRules()
    for family in args.rules:
        rules = rules.merged(registry.family(family).rules)
    renames = []
    for item in args.rename:
        pattern, sep, replacement = item.partition("=")
        if not sep or not pattern:
            raise ZooError(f"--rename {item!r}: expected REGEX=REPLACEMENT, e.g. '^module\\.=' or '^fpn\\.=neck.'")
        renames.append((pattern, replacement))
    try:
        flags = TransferRules(
            include=args.include,
            exclude=args.exclude,
            rename=renames,
            shape=args.shape,
            suffix_match=False if args.no_suffix_match else None,
        )
    except SpecValueError as exc:
        raise ZooError(f"--{exc.attribute.split('[')[0]}: {exc.message}") from None
    return rules.merged(flags)


def cmd_transfer(args: Any) -> int:
    from ..checkpoint import read_checkpoint, validate_training_checkpoint
    from ..errors import CheckpointError
    from ..transfer import plan_transfer, validate_source

    registry = registry_for(args)
    rules = rules_from_args(args, registry)
    require = parse_require(args.require)
    classes = parse_classes(args.classes)
    num_classes = args.num_classes or (len(classes) if classes else None)
    if classes and num_classes != len(classes):
        raise ZooError(f"--classes names {len(classes)} classes but --num-classes is {num_classes}")
    if args.output and Path(args.output).suffix not in (".pt", ".pth", ".safetensors"):
        raise ZooError(f"-o {args.output}: use a .pt, .pth or .safetensors file name")

    plan = plan_transfer(args.source, args.target, num_classes=num_classes, rules=rules, target_classes=classes, registry=registry)
    if classes is None and plan.target_classes and num_classes in (None, len(plan.target_classes)):
        classes = list(plan.target_classes)  # e.g. a tier taking over its source's classes
        num_classes = len(classes)
    warnings = []
    if plan.source.path is not None and plan.source.path.suffix != ".safetensors" and Path(args.source).is_file():
        checkpoint = read_checkpoint(plan.source.path, mmap=True)
        if checkpoint.layout == "model_state_dict":
            try:
                warnings = validate_training_checkpoint(checkpoint, min_epochs=args.min_epochs)
            except CheckpointError as exc:
                if "NaN" in str(exc):
                    raise
                warnings = [str(exc)]
    validate_source(plan)  # non-finite source tensors are refused before anything is written
    plan.enforce(require, strict=args.strict)
    for warning in warnings:
        print(f"zoo: warning: {warning}", file=sys.stderr)

    written = None
    if args.output and not args.plan:
        written = _apply_and_save(plan, args, registry, num_classes, classes)
    if args.json:
        print_json({**plan.to_dict(), "output": str(written) if written else None})
    else:
        print(plan.report(verbose=args.verbose_plan))
        if written:
            print(f"wrote {written}")
        elif not args.plan:
            print("nothing written; pass -o OUT.pt to save the target with these weights")
    return 0


def _apply_and_save(plan: Any, args: Any, registry: Any, num_classes: int | None, classes: list[str] | None) -> Path:
    import torch

    from ..checkpoint import save_checkpoint, save_safetensors
    from ..fileio import sha256_file
    from ..heads import num_outputs
    from ..models import build_model
    from ..provenance import make_provenance

    target = registry.resolve(args.target)
    torch.manual_seed(0)  # new tensors start from the same initialisation every time
    model = build_model(target, registry=registry, pretrained=False, num_classes=num_classes)
    report = plan.apply(model)
    source_path = plan.source.path
    source_sha = sha256_file(source_path) if source_path else None
    try:
        outputs = num_outputs(model)
    except ZooError:
        outputs = num_classes
    provenance = make_provenance(
        model=target.name,
        base_model=plan.source.name,
        source=plan.source.spec.source if plan.source.spec else "file",
        revision=plan.source.spec.revision if plan.source.spec else None,
        weights_sha256=source_sha,
        num_classes=outputs,
        class_names=classes,
        transfer=report,
        parent={"path": str(source_path.resolve()), "sha256": source_sha} if source_path and Path(args.source).is_file() else None,
    )
    output = Path(args.output)
    if output.suffix == ".safetensors":
        save_safetensors(model.state_dict(), output, provenance)
    else:
        save_checkpoint({"model_state_dict": model.state_dict(), "epoch": 0, "provenance": provenance}, output)
    return output


def cmd_export(args: Any) -> int:
    from ..checkpoint import KNOWN_PREFIXES, read_checkpoint, save_safetensors
    from ..fileio import sha256_file
    from ..paths import display

    output = Path(args.output)
    if output.suffix != ".safetensors":
        raise ZooError(f"-o {args.output}: exports are safetensors files; name it OUT.safetensors")
    checkpoint = read_checkpoint(args.checkpoint, strip=KNOWN_PREFIXES)
    provenance = dict(checkpoint.provenance)
    tensors = checkpoint.state_dict
    if args.backbone_only:
        tensors = _backbone_tensors(checkpoint, registry_for(args))
    provenance["exported_from"] = {"path": display(checkpoint.path), "sha256": sha256_file(checkpoint.path)}
    provenance["export"] = "backbone" if args.backbone_only else "model"
    save_safetensors(tensors, output, provenance)
    print(f"wrote {output} ({len(tensors)} tensors{', backbone only' if args.backbone_only else ''})")
    return 0


def _backbone_tensors(checkpoint: Any, registry: Any) -> dict[str, Any]:
    from ..groups import layer_groups
    from ..models import build_skeleton
    from ..paths import display
    from ..specs import Role
    from ..transfer import key_groups

    name = checkpoint.provenance.get("model")
    if not name:
        raise ZooError(
            f"{display(checkpoint.path)}: --backbone-only needs provenance naming the model to tell backbone from "
            "heads; export the whole model instead"
        )
    model = build_skeleton(registry.resolve(name), registry=registry, num_classes=checkpoint.provenance.get("num_classes"))
    owners = key_groups(list(checkpoint.state_dict), layer_groups(model, registry=registry))
    return {key: tensor for key, tensor in checkpoint.state_dict.items() if owners[key][1] == Role.BACKBONE.value}
