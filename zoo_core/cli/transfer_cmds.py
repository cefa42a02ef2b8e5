"""``zoo transfer`` and ``zoo export``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from ..anatomy import num_outputs
from ..checkpoint import KNOWN_PREFIXES, read_checkpoint, save_checkpoint, save_safetensors
from ..errors import CheckpointError, ZooError
from ..fileio import sha256_file
from ..groups import layer_groups
from ..models import build_skeleton
from ..paths import display
from ..plans import plan_names
from ..provenance import make_provenance
from ..specs import Role, SpecValueError, TransferRules
from ..transfer import key_groups
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

    registry = registry_for(args)
    rules = rules_from_args(args, registry)
    require = parse_require(args.require)
    classes = parse_classes(args.classes)
    num_classes = args.num_classes or (len(classes) if classes else None)
    if classes and num_classes != len(classes):
        raise ZooError(f"--classes names {len(classes)} classes but --num-classes is {num_classes}")
    if args.output and Path(args.output).suffix not in (".pt", ".pth", ".safetensors"):
        raise ZooError(f"-o {args.output}: use a .pt, .pth or .safetensors file name")

    planned = plan_names(
        args.source, args.target, num_classes=num_classes, rules=rules, target_classes=classes, in_chans=args.in_chans, registry=registry
    )
    plan = planned.plan
    warnings = _training_warnings(plan.source, args.min_epochs)
    plan.enforce(require, strict=args.strict)
    written = _apply_and_save(planned, args, registry) if args.output and not args.plan else None
    for warning in warnings:
        print(f"zoo: warning: {warning}", file=sys.stderr)
    if args.json:
        print_json({**plan.to_dict(), "output": str(written) if written else None})
    else:
        print(plan.report(verbose=args.verbose_plan))
        if written:
            print(f"wrote {written}")
        elif not args.plan:
            print("nothing written; pass -o OUT.pt to save the target with these weights")
    return 0


def _training_warnings(source: Any, min_epochs: int) -> list[str]:
    """Seed 000's checks of a training checkpoint, as warnings: the transfer can rightly go on."""
    try:
        return source.training_warnings(min_epochs=min_epochs)
    except CheckpointError as exc:  # a missing key: worth saying, not worth refusing
        return [str(exc)]


def _apply_and_save(planned: Any, args: Any, registry: Any) -> Path:


    plan, build = planned.plan, planned.build
    torch.manual_seed(0)  # new tensors start from the same initialisation every time
    model = build.build(registry)
    report = plan.apply(model)  # finite source tensors only: checked here, before anything is written
    source = plan.source
    digest = source.digest()
    try:
        outputs = num_outputs(model, registry.plugins.hook)
    except ZooError:
        outputs = build.num_classes
    provenance = make_provenance(
        model=build.spec.name,
        base_model=source.name,
        source=source.spec.source if source.spec else "file",
        revision=source.spec.revision if source.spec else None,
        weights_sha256=digest,
        num_classes=outputs,
        class_names=list(plan.target_classes) if plan.target_classes else None,
        transfer=report,
        parent={"path": str(source.path.resolve()), "sha256": digest} if source.path and source.spec is None else None,
    )
    output = Path(args.output)
    if output.suffix == ".safetensors":
        save_safetensors(model.state_dict(), output, provenance)
    else:
        save_checkpoint({"model_state_dict": model.state_dict(), "epoch": 0, "provenance": provenance}, output)
    return output


def cmd_export(args: Any) -> int:

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

    name = checkpoint.provenance.get("model")
    if not name:
        raise ZooError(
            f"{display(checkpoint.path)}: --backbone-only needs provenance naming the model to tell backbone from "
            "heads; export the whole model instead"
        )
    model = build_skeleton(registry.resolve(name), registry=registry, num_classes=checkpoint.provenance.get("num_classes"))
    owners = key_groups(list(checkpoint.state_dict), layer_groups(model, registry=registry))
    return {key: tensor for key, tensor in checkpoint.state_dict.items() if owners[key][1] is Role.BACKBONE}
