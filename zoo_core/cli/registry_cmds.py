"""``zoo list / info / pull / import / plugins / tiers / recipes``.

``list`` and ``plugins`` never import torch: names come from the index files that
:mod:`zoo_core.sources` keeps under ``$ZOO_HOME/index``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .common import human_count, print_json, registry_for, table


def cmd_list(args: Any) -> int:
    registry = registry_for(args)
    rows = registry.list_models(args.pattern, source=args.source, pretrained=args.pretrained)
    if args.json:
        print_json([row.to_dict() for row in rows])
        return 0
    if not rows:
        print(f"no names match {args.pattern or '*'!r}; run `zoo list` without a pattern to see all", file=sys.stderr)
        return 0
    print(table([(row.name, row.kind, ", ".join(row.tags) or row.description) for row in rows], ("NAME", "KIND", "TAGS / TARGET")))
    return 0


def cmd_info(args: Any) -> int:
    from ..anatomy import input_config
    from ..errors import WeightsError, ZooError
    from ..groups import layer_groups
    from ..models import build_skeleton, has_own_weights
    from ..weights import locate

    registry = registry_for(args)
    resolved = registry.resolve(args.name)
    data = resolved.to_dict()
    try:
        located = locate(resolved) if has_own_weights(resolved) else None
    except WeightsError as exc:
        located, data["cache_error"] = None, str(exc)
    data["cached"] = located is not None
    data["files"] = [item.to_dict() for item in located] if located else []
    options = {"in_chans": args.in_chans} if args.in_chans is not None else {}
    try:
        model = build_skeleton(resolved, registry=registry, num_classes=args.num_classes, **options)
    except ZooError as exc:
        if resolved.tier is None or args.num_classes is not None or args.groups:
            raise
        model = None  # a tier without a class count of its own: say how to count
        data["parameters_note"] = f"{exc}"
    data["parameters"] = sum(parameter.numel() for parameter in model.parameters()) if model is not None else None
    if model is not None:
        inputs = input_config(model, registry.plugins.hook)
        data["input"] = {**inputs.to_dict(), "resize_size": inputs.resize_size, "eval_transforms": inputs.describe()}
    groups = None
    if args.groups:
        groups = layer_groups(model, granularity="fine" if args.fine else "coarse", registry=registry)
        data["groups"] = groups.to_rows()
    if args.json:
        print_json(data)
        return 0
    print(f"name          {data['name']}")
    if data["requested"] != data["name"]:
        print(f"requested     {data['requested']}  ({data['via']})")
    print(f"source        {data['source']}  (architecture {data['architecture']})")
    print(f"tag           {data['tag'] or '-'}")
    print(f"revision      {data['revision'] or '-'}")
    if resolved.extra.get("backbone_only"):
        print("pretrained    yes (backbone only: no head, no classes)")
    else:
        print(f"pretrained    {'yes' if data['pretrained'] else 'no'}" + (f", {data['num_classes']} classes" if data["num_classes"] else ""))
    print(f"cached        {'yes' if data['cached'] else 'no'}" + (f"  ({data['cache_error']})" if "cache_error" in data else ""))
    for item in data["files"]:
        pin = "pinned" if item["pinned"] else "not pinned"
        print(f"  {item['filename']}  sha256 {item['sha256']}  {human_count(item['size'])}B  {pin}\n    {item['path']}")
    if data["parameters"] is None:
        print("parameters    - (this tier takes its class count from you: add --num-classes N)")
    else:
        print(f"parameters    {data['parameters']:,} ({human_count(data['parameters'])})")
    if "input" in data:
        spec = data["input"]
        print(f"input         {spec['channels']}x{spec['size']}x{spec['size']}, crop_pct {spec['crop_pct']:g}")
        print(f"eval          {spec['eval_transforms']}")
        print("train         the same, with the recipe stage's augmentation (crop_scale: a random resized crop in place of the centre crop)")
    if groups is not None:
        print()
        print(table([(i, g.name, g.role.value, f"{g.numel:,}", len(g.params)) for i, g in enumerate(groups)],
                    ("#", "GROUP", "ROLE", "PARAMETERS", "TENSORS")))
    return 0


def cmd_pull(args: Any) -> int:
    from ..lockfile import LockFile
    from ..weights import pull

    registry = registry_for(args)
    lock = LockFile.read()
    pinned = []
    for name in args.names:
        entry = pull(registry.resolve(name), lock)
        pinned.append(entry)
        if not args.json:
            for item in entry.files:
                print(f"pinned {entry.name}: {item.filename} sha256 {item.sha256[:16]}… ({human_count(item.size)}B)")
    if args.json:
        print_json({"lock": str(lock.path), "models": {entry.name: entry.to_dict() for entry in pinned}})
    else:
        print(f"lock file: {lock.path}")
    return 0


def cmd_import(args: Any) -> int:
    from ..lockfile import LockFile
    from ..plans import import_weights

    registry = registry_for(args)
    lock = LockFile.read()
    entry = import_weights(args.name, Path(args.file), registry=registry, lock=lock)
    if args.json:
        print_json({"lock": str(lock.path), "name": entry.name, **entry.to_dict()})
    else:
        item = entry.files[0]
        print(f"imported {args.file} as {entry.name}: sha256 {item.sha256[:16]}… pinned in {lock.path}")
    return 0


def cmd_verify(args: Any) -> int:
    from ..errors import WeightsError
    from ..lockfile import LockFile
    from ..weights import VerifyStatus, verify

    registry = registry_for(args)
    lock = LockFile.read()
    names = args.names or sorted(lock.entries)
    if not names:
        raise WeightsError(f"{lock.path}: pins nothing yet; `zoo pull NAME` or `zoo import NAME FILE` pins a model")
    checks = [check for name in names for check in verify(registry.resolve(name), lock)]
    failed = [check for check in checks if check.status is not VerifyStatus.OK]
    if args.json:
        print_json({"lock": str(lock.path), "files": [check.to_dict() for check in checks]})
    else:
        rows = [(c.name, c.filename, c.status.value, c.detail[:16] + "…" if c.status is VerifyStatus.OK else c.detail) for c in checks]
        print(table(rows, ("NAME", "FILE", "STATUS", "SHA256 / WHAT TO DO")))
    if failed:
        first = failed[0]
        raise WeightsError(
            f"{len(failed)} of {len(checks)} files failed verification; first: {first.name} {first.filename}: "
            f"{first.status.value} ({first.detail})"
        )
    return 0


def cmd_plugins(args: Any) -> int:
    from ..catalog import load_catalog
    from ..plugins import load_plugins
    from ..registry import Registry

    host = load_plugins(strict=False)
    Registry(host, load_catalog(args.registry)).collect_all()  # a registration hook that raises is reported
    records = sorted(host.records, key=lambda record: record.name)
    if args.json:
        print_json([record.to_dict() for record in records])
        return 0
    rows = []
    for record in records:
        detail = record.error or ", ".join(hook.removeprefix("zoo_") for hook in record.hooks)
        version = f"{record.distribution} {record.version}" if record.distribution else "-"
        rows.append((record.name, record.status.value, version, record.module, detail))
    print(table(rows, ("PLUGIN", "STATUS", "DISTRIBUTION", "MODULE", "HOOKS / ERROR")))
    return 0


def cmd_tiers(args: Any) -> int:
    registry = registry_for(args)
    if args.family is None:
        families = sorted(registry.families.values(), key=lambda family: family.name)
        if args.json:
            print_json([_family_dict(family) for family in families])
            return 0
        rows = [(f.name, ", ".join(t.tier for t in f.ordered()), str(f.origin), f.description) for f in families]
        print(table(rows, ("FAMILY", "TIERS", "ORIGIN", "DESCRIPTION")))
        return 0
    family = registry.family(args.family)
    if args.json:
        print_json(_family_dict(family))
        return 0
    print(f"{family.name}: {family.description}  ({family.origin})")
    rows = []
    for tier in family.ordered():
        heads = ", ".join(f"{name}:{head.kind}" for name, head in tier.heads.items())
        neck = tier.neck.kind if tier.neck else "-"
        rows.append((tier.name, tier.rank, tier.backbone, neck, heads, "pinned" if tier.weights else "-"))
    print(table(rows, ("TIER", "RANK", "BACKBONE", "NECK", "HEADS", "WEIGHTS")))
    rules = family.rules.to_dict()
    shown = {key: value for key, value in rules.items() if value not in (None, [], ())}
    if shown:
        print(f"transfer rules: {shown}")
    return 0


def _family_dict(family: Any) -> dict[str, Any]:
    return {
        "name": family.name,
        "description": family.description,
        "origin": str(family.origin),
        "builder": family.builder,
        "rules": family.rules.to_dict(),
        "tiers": [
            {
                "name": tier.name,
                "tier": tier.tier,
                "rank": tier.rank,
                "backbone": tier.backbone,
                "neck": {"kind": tier.neck.kind, **tier.neck.options} if tier.neck else None,
                "heads": {name: {"kind": h.kind, "out": h.out, **h.options} for name, h in tier.heads.items()},
                "params": dict(tier.params),
                "weights": bool(tier.weights),
                "description": tier.description,
            }
            for tier in family.ordered()
        ],
    }


def describe_trains(stage: Any) -> str:
    if stage.train is not None:
        trains = "+".join(stage.train)
    elif stage.freeze is not None:
        trains = stage.freeze.trains
    else:
        trains = "all"
    if stage.unfreeze_every:
        trains += f", +1 group every {stage.unfreeze_every} ep"
    return trains


def describe_lr(stage: Any) -> str:
    lr = stage.lr
    if lr.value is not None:
        return f"{lr.value:g}"
    if lr.base is not None:
        return f"{lr.base:g} / {lr.decay:g}^depth" if lr.decay else f"{lr.base:g}"
    return ", ".join(f"{key}={value:g}" for key, value in lr.per_group.items())


def cmd_recipes(args: Any) -> int:
    registry = registry_for(args)
    if args.name is None:
        if args.check:
            from ..errors import ZooError

            raise ZooError("--check needs a recipe: zoo recipes NAME --check")
        recipes = sorted(registry.recipes.values(), key=lambda recipe: recipe.name)
        if args.json:
            print_json([{**recipe.to_dict(), "origin": str(recipe.origin)} for recipe in recipes])
            return 0
        rows = [(r.name, len(r.stages), r.total_epochs, r.description) for r in recipes]
        print(table(rows, ("RECIPE", "STAGES", "EPOCHS", "DESCRIPTION")))
        return 0
    recipe = registry.recipe(args.name)
    if args.check:
        return _check_recipe(recipe, as_json=args.json)
    if args.json:
        print_json({**recipe.to_dict(), "origin": str(recipe.origin)})
        return 0
    print(f"{recipe.name}: {recipe.description}  ({recipe.origin})")
    extras = f"optimizer {recipe.optimizer.value}, weight decay {recipe.weight_decay:g}, batch {recipe.batch_size}"
    if recipe.max_lr is not None:
        extras += f", max lr {recipe.max_lr:g}"
    print(extras)
    rows = []
    for index, stage in enumerate(recipe.stages):
        other = []
        if stage.warmup_epochs:
            other.append(f"warmup {stage.warmup_epochs:g}")
        if stage.ema:
            other.append(f"ema {stage.ema:g}")
        if stage.grad_clip:
            other.append(f"clip {stage.grad_clip:g}")
        if stage.early_stop:
            other.append(f"early stop {stage.early_stop.monitor}/{stage.early_stop.patience}")
        if stage.drift_guard:
            other.append(f"drift ±{stage.drift_guard.band:.0%} {stage.drift_guard.action.value}")
        augment = ", ".join(f"{k}={v}" for k, v in stage.augment.items()) or "-"
        rows.append((index, stage.name or "-", stage.epochs, describe_trains(stage), describe_lr(stage), stage.schedule.value, augment, stage.bn.value, "; ".join(other)))
    print(table(rows, ("#", "STAGE", "EPOCHS", "TRAINS", "LR", "SCHEDULE", "AUGMENT", "BN", "OTHER")))
    return 0


def _check_recipe(recipe: Any, *, as_json: bool) -> int:
    """The fine-tuning guide's warnings about a recipe; advice, so the exit status stays 0."""
    from ..engine.recipes import recipe_warnings

    warnings = recipe_warnings(recipe)
    if as_json:
        print_json({"recipe": recipe.name, "warnings": warnings})
    elif warnings:
        print("\n".join(f"warning: recipe '{recipe.name}' {warning}" for warning in warnings))
    else:
        print(
            f"recipe '{recipe.name}': no warnings (stages unfreeze one level at a time, rates within max_lr, no grid normalisation while frozen)"
        )
    return 0
