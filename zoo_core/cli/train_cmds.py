"""``zoo finetune / eval / features / plot``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..anatomy import input_config
from ..engine import distributed
from ..engine.api import check_model, evaluate, plan_run, prepare
from ..engine.options import RunOptions
from ..errors import ZooError
from ..features import FeatureExtractor
from ..plot import plot_confusion, plot_gradients, plot_runs
from .common import parse_classes, print_json, registry_for, table

LAUNCH_FLAGS = ("--nproc", "--nnodes", "--node-rank", "--master-addr", "--master-port", "--rdzv-endpoint", "--rdzv-id")


def _worker_argv(argv: list[str]) -> list[str]:
    """``argv`` without the launcher's flags: a worker runs the run, it does not launch one."""
    result, skip = [], False
    for item in argv:
        if skip:
            skip = False
            continue
        if item in LAUNCH_FLAGS:
            skip = True
            continue
        if item.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            continue
        result.append(item)
    return result


def topology(args: Any) -> distributed.Topology:
    return distributed.Topology(
        nproc=args.nproc, nnodes=args.nnodes, node_rank=args.node_rank, master_addr=args.master_addr,
        master_port=args.master_port, rdzv_endpoint=args.rdzv_endpoint, rdzv_id=args.rdzv_id,
    )  # fmt: skip


def run_options(args: Any) -> Any:
    """``zoo finetune``'s flags as the run's options."""
    return RunOptions(
        recipe=args.recipe, model=args.model, data=args.data, task=args.task, run_dir=args.run_dir, resume=args.resume,
        overrides=args.set, pretrained=args.pretrained, image_size=args.image_size, in_chans=args.in_chans,
        val_fraction=args.val_fraction, workers=args.workers, device=args.device, compile_backend=args.compile,
        use_cache=not args.no_cache, seed=args.seed, detector=args.detector, classes=parse_classes(args.classes),
        data_format=args.data_format, cache_images=args.cache_images, cache_budget=args.cache_budget,
        strategy=args.strategy, keep=args.keep, gradient_flow=args.gradient_flow, strict_groups=args.strict_groups,
    )  # fmt: skip


def _launch(args: Any, options: Any, where: distributed.Topology) -> int:
    """Check once, here, then hand the run to this machine's ``--nproc`` processes (and the other machines')."""
    import sys

    registry = registry_for(args)
    # the run folder is global rank 0's; on a machine that may not hold it, the folder may not be there
    check_model(plan_run(options, registry=registry, world_size=where.world_size, check_folder=where.first_node), registry=registry)
    try:
        return distributed.launch(_worker_argv(args._argv), where)
    except distributed.WorkerFailed as exc:  # not a ZooError: keep the worker's status, not 2
        print(f"zoo: error: {exc}", file=sys.stderr)
        return exc.status


def _print_result(result: Any) -> None:
    best = result.best
    print(f"run folder {result.run_dir}")
    if best["value"] is not None:
        print(f"best {best['metric']} {best['value']:.4f} (epoch {best['epoch'] + 1}) -> {result.best_checkpoint}")
    final = result.final
    if "accuracy" in final:
        print(f"final val accuracy {final['accuracy']:.4f}, val loss {final['val_loss']:.4f}")
    if "map" in final:
        print(f"final val map {final['map']:.4f}, map_50 {final['map_50']:.4f}, f1 {final['f1']:.4f}, val loss {final['val_loss']:.4f}")
    if result.stopped:
        print(f"stopped: {result.stopped}")


def cmd_finetune(args: Any) -> int:
    import logging


    options = run_options(args)
    where = topology(args)
    if where.distributed and not distributed.in_torchrun():
        return _launch(args, options, where)
    if not args.json:
        logging.getLogger("zoo_core.engine").setLevel(min(logging.getLogger().level, logging.INFO))
    prepared = prepare(options, registry=registry_for(args))
    main_process = prepared.context.dist.is_main
    if prepared.transfer_plan is not None and main_process and not args.json:
        print(prepared.transfer_plan.report())
    result = prepared.run()
    if main_process and args.json:
        print_json(result.to_dict())
    elif main_process:
        _print_result(result)
    return 0


def cmd_eval(args: Any) -> int:

    metrics = evaluate(
        args.checkpoint, args.data, task=args.task, split=args.split, device=args.device, data_format=args.data_format,
        workers=args.workers, registry=registry_for(args),
    )  # fmt: skip
    if args.json:
        print_json(metrics)
        return 0
    numbers = [(key, f"{value:.4f}") for key, value in metrics.items() if isinstance(value, (int, float))]
    print(table(numbers, ("METRIC", "VALUE")))
    if metrics.get("per_class"):
        print()
        rows = [(c["class"], f"{c['precision']:.4f}", f"{c['recall']:.4f}", f"{c['f1']:.4f}", c["support"]) for c in metrics["per_class"]]
        print(table(rows, ("CLASS", "PRECISION", "RECALL", "F1", "SUPPORT")))
    if metrics.get("confusion_matrix"):
        matrix = metrics["confusion_matrix"]
        print("\nconfusion matrix (rows: true class, columns: predicted)")
        print(table([(name, *counts) for name, counts in zip(matrix["classes"], matrix["counts"])], ("", *matrix["classes"])))
    return 0


def cmd_predict(args: Any) -> int:
    from ..inference import image_files, load_model

    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise ZooError(f"--threshold must be between 0 and 1, got {args.threshold}")
    loaded = load_model(args.checkpoint, device=args.device, registry=registry_for(args))
    draw = getattr(loaded.task, "draw", None)
    if args.output and not callable(draw):
        raise ZooError(f"-o draws boxes, and task '{loaded.task.name}' predicts none; use --json to keep the predictions")
    answers = loaded.predict(image_files(args.images), threshold=args.threshold, top_k=args.top_k)
    drawn = [str(draw(answer, Path(args.output))) for answer in answers] if args.output else []
    if args.json:
        print_json(answers)
        return 0
    for answer in answers:
        if "classes" in answer:
            print(f"{answer['image']}: " + ", ".join(f"{c['name']} {c['probability']:.4f}" for c in answer["classes"]))
        else:
            print(f"{answer['image']}: {len(answer['boxes'])} boxes")
            for found in answer["boxes"]:
                print(f"  {found['class']} {found['score']:.4f} [{', '.join(f'{v:.1f}' for v in found['box'])}]")
    for path in drawn:
        print(f"wrote {path}")
    return 0


def cmd_features(args: Any) -> int:


    registry = registry_for(args)
    extractor = FeatureExtractor(args.name, layers=args.layers, pool=args.pool, registry=registry)
    channels = input_config(extractor.body, registry.plugins.hook).channels
    with torch.no_grad():
        outputs = extractor(torch.zeros(1, channels, args.size, args.size))
    shapes = {name: list(value.shape) for name, value in outputs.items()}
    if args.json:
        print_json(shapes)
    else:
        print(table([(name, "x".join(map(str, shape))) for name, shape in shapes.items()], ("LAYER", "SHAPE")))
    return 0


def cmd_plot(args: Any) -> int:

    first = Path(args.run_dirs[0])
    if args.grads and (len(args.run_dirs) > 1 or first.suffix == ".json"):
        raise ZooError("zoo plot --grads draws the gradient flow of one run; give one RUN_DIR (not several, not an eval JSON)")
    if first.suffix == ".json":  # a `zoo eval --json` result: its confusion matrix
        output = Path(args.output) if args.output else first.with_name(first.stem + "-confusion.png")
        plot_confusion(first, output)
        print(f"wrote {output}")
        return 0
    if args.grads:
        output = Path(args.output) if args.output else first / "gradients.png"
        plot_gradients(first, output)
        print(f"wrote {output}")
        return 0
    output = Path(args.output) if args.output else first / "curves.png"
    plot_runs([Path(path) for path in args.run_dirs], output)
    print(f"wrote {output}")
    return 0
