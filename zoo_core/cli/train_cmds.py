"""``zoo finetune / eval / features / plot``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ZooError
from .common import print_json, registry_for, table


def _argv_without_nproc(argv: list[str]) -> list[str]:
    result, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item == "--nproc":
            skip = True
            continue
        if item.startswith("--nproc="):
            continue
        result.append(item)
    return result


def cmd_finetune(args: Any) -> int:
    import logging

    from ..engine import distributed

    if args.nproc < 1:
        raise ZooError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc > 1 and not distributed.in_torchrun():
        from ..engine.api import plan_run

        # bad input fails here, once, instead of in every process torchrun starts
        plan_run(
            args.recipe, args.model, args.data, task=args.task, run_dir=args.run_dir, resume=args.resume,
            overrides=args.set, pretrained=args.pretrained, val_fraction=args.val_fraction, seed=args.seed,
            registry=registry_for(args), world_size=args.nproc, check_model=True,
        )
        try:
            return distributed.launch(_argv_without_nproc(args._argv), args.nproc)
        except distributed.WorkerFailed as exc:  # not a ZooError: keep the worker's status, not 2
            import sys

            print(f"zoo: error: {exc}", file=sys.stderr)
            return exc.status
    if not args.json:
        logging.getLogger("zoo_core.engine").setLevel(min(logging.getLogger().level, logging.INFO))
    from ..engine.api import finetune

    result = finetune(
        args.recipe,
        args.model,
        args.data,
        task=args.task,
        run_dir=args.run_dir,
        resume=args.resume,
        overrides=args.set,
        pretrained=args.pretrained,
        image_size=args.image_size,
        val_fraction=args.val_fraction,
        workers=args.workers,
        device=args.device,
        compile_backend=args.compile,
        use_cache=not args.no_cache,
        seed=args.seed,
        registry=registry_for(args),
        print_plan=not args.json,
    )
    if not distributed.in_torchrun() or int(__import__("os").environ.get("RANK", "0")) == 0:
        if args.json:
            print_json(result.to_dict())
        else:
            best = result.best
            print(f"run folder {result.run_dir}")
            if best["value"] is not None:
                print(f"best {best['metric']} {best['value']:.4f} (epoch {best['epoch'] + 1}) -> {result.best_checkpoint}")
            final = result.final
            if "accuracy" in final:
                print(f"final val accuracy {final['accuracy']:.4f}, val loss {final['val_loss']:.4f}")
            if result.stopped:
                print(f"stopped: {result.stopped}")
    return 0


def cmd_eval(args: Any) -> int:
    from ..engine.api import evaluate

    metrics = evaluate(args.checkpoint, args.data, task=args.task, split=args.split, device=args.device, registry=registry_for(args))
    if args.json:
        print_json(metrics)
    else:
        print(table([(key, f"{value:.4f}") for key, value in metrics.items()], ("METRIC", "VALUE")))
    return 0


def cmd_features(args: Any) -> int:
    import torch

    from ..features import FeatureExtractor

    extractor = FeatureExtractor(args.name, layers=args.layers, pool=args.pool, registry=registry_for(args))
    channels = 3
    config = getattr(extractor.body, "pretrained_cfg", None) or {}
    if config.get("input_size"):
        channels = config["input_size"][0]
    with torch.no_grad():
        outputs = extractor(torch.zeros(1, channels, args.size, args.size))
    shapes = {name: list(value.shape) for name, value in outputs.items()}
    if args.json:
        print_json(shapes)
    else:
        print(table([(name, "x".join(map(str, shape))) for name, shape in shapes.items()], ("LAYER", "SHAPE")))
    return 0


def cmd_plot(args: Any) -> int:
    from ..plot import plot_runs

    output = Path(args.output) if args.output else Path(args.run_dirs[0]) / "curves.png"
    plot_runs([Path(path) for path in args.run_dirs], output)
    print(f"wrote {output}")
    return 0
