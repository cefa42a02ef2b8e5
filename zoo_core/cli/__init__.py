"""The ``zoo`` command. ``main(argv)`` is the entry point; it returns the exit status.

The parser is built here without importing torch; each command's handler lives in a module
that is imported only when that command runs, so ``zoo list`` and ``zoo plugins`` stay light.
Bad input (any :class:`zoo_core.errors.ZooError`) prints one line, ``zoo: error: …``, and
exits with status 2; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from .. import paths
from ..engine.task import MIN_IMAGE_SIZE
from ..errors import ZooError

log = logging.getLogger("zoo_core.cli")


class UsageError(ZooError):
    """Command-line arguments argparse refused."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _whole_number(minimum: int, what: str = ""):
    """An argparse type: an integer of at least ``minimum`` (argparse names the option)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}{what}, got {value}")
        return value

    return parse


IMAGE_SIZE = _whole_number(MIN_IMAGE_SIZE, " pixels")  # below it, a stride-32 backbone sees one pixel
COUNT = _whole_number(1)


def _handler(module: str, function: str) -> str:
    return f"zoo_core.cli.{module}:{function}"


Command = Callable[[str, str, str], argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="zoo", description="Model-zoo registry and transfer-learning engine for PyTorch.")
    parser.add_argument("--registry", action="append", default=[], metavar="FILE", help="extra catalog file (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress (INFO)")
    parser.add_argument("--debug", action="store_true", help="log everything and show tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str, handler: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    for add in (_registry_commands, _transfer_commands, _training_commands, _chain_commands, _demo_command):
        add(command)
    return parser


def _registry_commands(command: Command) -> None:
    """`zoo` commands for names, weights and what plugins registered."""
    sub = command("list", "list model names (aliases, tiers, source architectures)", _handler("registry_cmds", "cmd_list"))
    sub.add_argument("pattern", nargs="?", help="shell-style pattern, e.g. 'resnet1*'")
    sub.add_argument("--source", help="only this source (timm, torchvision, alias, tier, …)")
    sub.add_argument("--pretrained", action="store_true", help="only names with pretrained weights")
    sub.add_argument("--json", action="store_true")

    sub = command("info", "resolve a name: source, tag, revision, cache state, files, parameters", _handler("registry_cmds", "cmd_info"))
    sub.add_argument("name")
    sub.add_argument("--groups", action="store_true", help="show the layer groups")
    sub.add_argument("--fine", action="store_true", help="fine-grained groups (one per block)")
    sub.add_argument("--num-classes", type=COUNT, help="build with this many classes")
    sub.add_argument("--in-chans", type=COUNT, help="build for this many input channels (timm's in_chans)")
    sub.add_argument("--json", action="store_true")

    sub = command("pull", "download weights into the caches and pin them in the lock file", _handler("registry_cmds", "cmd_pull"))
    sub.add_argument("names", nargs="+", metavar="NAME")
    sub.add_argument("--json", action="store_true")

    sub = command("import", "register a local weights file for NAME (air-gapped machines)", _handler("registry_cmds", "cmd_import"))
    sub.add_argument("name")
    sub.add_argument("file")
    sub.add_argument("--json", action="store_true")

    sub = command("verify", "re-hash pinned weight files against zoo.lock (all, or the NAMEs given)", _handler("registry_cmds", "cmd_verify"))
    sub.add_argument("names", nargs="*", metavar="NAME")
    sub.add_argument("--json", action="store_true")

    sub = command("plugins", "list plugins: loaded, blocked or failed", _handler("registry_cmds", "cmd_plugins"))
    sub.add_argument("--json", action="store_true")

    sub = command("tiers", "list tier families, or the tiers of one", _handler("registry_cmds", "cmd_tiers"))
    sub.add_argument("family", nargs="?")
    sub.add_argument("--json", action="store_true")

    sub = command("recipes", "list recipes, or show the stages of one", _handler("registry_cmds", "cmd_recipes"))
    sub.add_argument("name", nargs="?")
    sub.add_argument("--check", action="store_true", help="list what the recipe does that untrains pretrained weights")
    sub.add_argument("--json", action="store_true")


def _transfer_commands(command: Command) -> None:
    """`zoo` commands for carrying weights between models."""
    sub = command("transfer", "plan (and apply) carrying weights from SOURCE into TARGET", _handler("transfer_cmds", "cmd_transfer"))
    sub.add_argument("source", help="checkpoint path or registry name (its pretrained weights)")
    sub.add_argument("--to", required=True, dest="target", metavar="TARGET", help="registry name of the target model")
    sub.add_argument("--num-classes", type=COUNT)
    sub.add_argument("--in-chans", type=COUNT, help="input channels of the target; its first convolution is adapted")
    sub.add_argument("--classes", help="comma-separated class names of the target (class-aware head rows)")
    sub.add_argument("--rules", action="append", default=[], metavar="NAME", help="apply the transfer rules of a tier family")
    sub.add_argument("--include", action="append", default=[], metavar="REGEX")
    sub.add_argument("--exclude", action="append", default=[], metavar="REGEX")
    sub.add_argument("--rename", action="append", default=[], metavar="REGEX=REPLACEMENT")
    sub.add_argument("--shape", choices=("skip", "adapt"), help="what to do with tensors whose shapes differ")
    sub.add_argument("--no-suffix-match", action="store_true", help="do not fall back to dotted-suffix matching")
    sub.add_argument("--require", action="append", default=[], metavar="GROUP=FRAC", help="coverage policy, e.g. backbone=1.0")
    sub.add_argument("--strict", action="store_true", help="every target tensor must be carried")
    sub.add_argument("--plan", action="store_true", help="only show the plan; write nothing")
    sub.add_argument("--min-epochs", type=_whole_number(0), default=50, help="warn when a training checkpoint has fewer epochs")
    sub.add_argument("--verbose-plan", action="store_true", help="list plain copies too")
    sub.add_argument("--json", action="store_true")
    sub.add_argument("-o", "--output", metavar="OUT", help="save the target with the carried weights (.pt or .safetensors)")

    sub = command("export", "export a checkpoint's weights as safetensors with provenance metadata", _handler("transfer_cmds", "cmd_export"))
    sub.add_argument("checkpoint")
    sub.add_argument("--backbone-only", action="store_true", help="only backbone tensors (backbone role)")
    sub.add_argument("-o", "--output", required=True, metavar="OUT.safetensors")


def _training_commands(command: Command) -> None:
    """`zoo` commands for fine-tuning and what comes out of it."""
    sub = command("features", "print the shapes of a model's intermediate feature maps", _handler("train_cmds", "cmd_features"))
    sub.add_argument("name")
    sub.add_argument("--layers", nargs="*", help="layer names or indices (default: every stage)")
    sub.add_argument("--pool", choices=("none", "avg", "max"), default="none")
    sub.add_argument("--size", type=IMAGE_SIZE, default=224, help="input resolution")
    sub.add_argument("--json", action="store_true")

    sub = command("finetune", "run a recipe on a data folder", _handler("train_cmds", "cmd_finetune"))
    sub.add_argument("--recipe", required=True)
    sub.add_argument("--model", required=True, help="registry name or checkpoint to start from")
    sub.add_argument(
        "--data", required=True,
        help="image folder (train/ and val/, or one folder to split), Tiny ImageNet, ImageNet, a CSV list, or COCO-format data",
    )  # fmt: skip
    sub.add_argument(
        "--data-format", metavar="NAME",
        help="dataset reader to read --data with (image-folder, tiny-imagenet, imagenet, csv, or a plugin's; default: recognised)",
    )  # fmt: skip
    sub.add_argument("--task", help="task plugin (default: the recipe's, else classification)")
    sub.add_argument("--run-dir", help="run folder (default: runs/<recipe>-<model>)")
    sub.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    sub.add_argument("--nproc", type=COUNT, default=1, help="processes on this machine (DDP through torchrun)")
    sub.add_argument("--nnodes", type=COUNT, default=1, help="machines taking part; run the same command on each")
    sub.add_argument("--node-rank", type=_whole_number(0), help="this machine's number, 0 to nnodes-1 (with --master-addr)")
    sub.add_argument("--master-addr", metavar="HOST", help="the address of node 0, where the machines meet")
    sub.add_argument("--master-port", type=_whole_number(1), metavar="PORT", help="its port (default 29500)")
    sub.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="meet at a c10d rendezvous instead; ranks are assigned as machines join")
    sub.add_argument("--rdzv-id", default="zoo", metavar="ID", help="a name the machines of one run share (default zoo)")
    sub.add_argument(
        "--strategy", choices=("ddp", "fsdp"), default="ddp",
        help="several processes: ddp keeps a copy of the model in each; fsdp shards it (FSDP2), for models too large for one device",
    )  # fmt: skip
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value, e.g. stages.0.epochs=1")
    sub.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=True, help="start from pretrained weights")
    sub.add_argument("--image-size", type=IMAGE_SIZE, help="input resolution (default: the model's)")
    sub.add_argument("--in-chans", type=COUNT, help="input channels (timm's in_chans; pretrained first convolutions are adapted)")
    sub.add_argument("--val-fraction", type=float, default=0.2)
    sub.add_argument("--workers", type=_whole_number(0), help="data-loading processes per training process (default: from the CPU count)")
    sub.add_argument(
        "--cache-images", metavar="SIZE", default=None,
        help="keep decoded images in a cache shared by the data workers, up to SIZE (e.g. 2GB; 0: never; "
        "default: when the data set's decoded images fit in 1 GB, or a tenth of free memory if less)",
    )  # fmt: skip
    sub.add_argument(
        "--cache-budget", metavar="SIZE",
        help="memory for cached backbone features; above it they spill to a file in the run folder (default: a quarter of free memory)",
    )  # fmt: skip
    sub.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    sub.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND", help="torch.compile the model")
    sub.add_argument("--no-cache", action="store_true", help="never cache backbone features")
    sub.add_argument(
        "--keep", default="last,best", metavar="LIST",
        help="checkpoints that stay: last (resumable, with optimizer state), best, stages (one per stage); default last,best",
    )  # fmt: skip
    sub.add_argument(
        "--gradient-flow", action=argparse.BooleanOptionalAction, default=True,
        help="log each group's gradient norm and update ratio per epoch and check that frozen groups stay still (default: on)",
    )  # fmt: skip
    sub.add_argument(
        "--strict-groups", action="store_true", help="a group that trains in a stage but gets no gradient or does not change is an error",
    )  # fmt: skip
    sub.add_argument("--seed", type=int)
    sub.add_argument(
        "--detector", help="detection head over the backbone: fcos (default), retinanet, fasterrcnn, multigrid"
    )
    sub.add_argument("--classes", help="comma-separated classes to keep, in this order (e.g. one class of multi-class data)")
    sub.add_argument("--json", action="store_true")

    sub = command("eval", "evaluate a checkpoint on a data folder", _handler("train_cmds", "cmd_eval"))
    sub.add_argument("checkpoint")
    sub.add_argument("--data", required=True)
    sub.add_argument(
        "--data-format", metavar="NAME",
        help="dataset reader to read --data with (image-folder, tiny-imagenet, imagenet, csv, or a plugin's; default: the run's, else recognised)",
    )  # fmt: skip
    sub.add_argument("--task")
    sub.add_argument("--split", choices=("val", "train", "all"), default="val")
    sub.add_argument("--workers", type=_whole_number(0), help="data-loading processes (default: from the CPU count)")
    sub.add_argument("--device")
    sub.add_argument("--json", action="store_true")

    sub = command("predict", "classes (or boxes) for new images with a trained checkpoint", _handler("train_cmds", "cmd_predict"))
    sub.add_argument("checkpoint")
    sub.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    sub.add_argument("--threshold", type=float, help="lowest probability or box score shown (detection default: 0.5)")
    sub.add_argument("--top-k", type=COUNT, help="classes (default 5) or boxes per image")
    sub.add_argument("--device")
    sub.add_argument("--json", action="store_true")
    sub.add_argument("-o", "--output", metavar="OUT", help="write each image with its boxes drawn into this folder")

    sub = command(
        "plot", "draw loss and metric curves of runs, with stage boundaries (or the confusion matrix of a `zoo eval --json` file)",
        _handler("train_cmds", "cmd_plot"),
    )  # fmt: skip
    sub.add_argument("run_dirs", nargs="+", metavar="RUN_DIR_OR_EVAL_JSON")
    sub.add_argument("--grads", action="store_true", help="each layer group's gradient norm and update ratio per epoch (log scale)")
    sub.add_argument("-o", "--output", metavar="FILE.png")

    sub = command(
        "report", "what a run did, stage by stage, and the fine-tuning checklist (exit 1 when a check fails)",
        _handler("report_cmds", "cmd_report"),
    )  # fmt: skip
    sub.add_argument("run_dir", metavar="RUN_DIR")
    sub.add_argument("--json", action="store_true")

    sub = command("runs", "list the run folders under a folder: model, recipe, status, best, size", _handler("report_cmds", "cmd_runs"))
    sub.add_argument("dir", nargs="?", default="runs", metavar="DIR", help="where the runs are (default: ./runs)")
    sub.add_argument("--clean", action="store_true", help="remove what finished runs no longer need (last.prev.pt, leftovers)")
    sub.add_argument("--json", action="store_true")


def _chain_commands(command: Command) -> None:
    """`zoo` commands for chains across datasets and the lineage of their checkpoints."""
    sub = command("chains", "list the chains: recipes run over datasets in order", _handler("chain_cmds", "cmd_chains"))
    sub.add_argument("name", nargs="?")
    sub.add_argument("--json", action="store_true")

    sub = command(
        "chain", "run a chain: each step starts from the previous step's best checkpoint", _handler("chain_cmds", "cmd_chain")
    )  # fmt: skip
    sub.add_argument("name")
    sub.add_argument("--run-dir", required=True, help="the chain's folder: one run folder per step, and chain.json")
    sub.add_argument("--resume", action="store_true", help="skip finished steps, resume the interrupted one")
    sub.add_argument("--compare-scratch", action="store_true", help="also train each step without transfer, for the table")
    sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a value of every step's recipe")
    sub.add_argument("--workers", type=_whole_number(0), help="data-loading processes per training process (default: from the CPU count)")
    sub.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    sub.add_argument("--seed", type=int, help="seed every step (default: each recipe's)")
    sub.add_argument("--json", action="store_true")

    sub = command("lineage", "a checkpoint's ancestry back to its pretrained source, each ancestor verified", _handler("chain_cmds", "cmd_lineage"))
    sub.add_argument("checkpoint", metavar="CKPT")
    sub.add_argument("--json", action="store_true")


def _demo_command(command: Command) -> None:
    """`zoo` commands for the main job on bundled data."""
    sub = command(
        "demo", "transfer against scratch on bundled real data: digits (classification) or tree crowns (detection)",
        _handler("demo_cmds", "cmd_demo"),
    )  # fmt: skip
    sub.add_argument("task", nargs="?", default="classification", help="classification (default) or detection")
    sub.add_argument("--quick", action="store_true", help="a smoke-sized run")
    sub.add_argument("--out", help="output folder (default: zoo-demo, or zoo-demo-TASK)")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--json", action="store_true")


def _configure_logging(verbose: bool, debug: bool) -> None:
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 logs for the run; the others only errors
        handler.setLevel(logging.ERROR)  # on the handler: commands may lower their loggers' levels
    logging.basicConfig(level=level, format="zoo: %(levelname)s: %(message)s", handlers=[handler], force=True)
    logging.getLogger("zoo_core.sources").setLevel(min(level, logging.INFO))  # "indexing … names": the one slow first step
    if not debug:  # third-party libraries speak up only when asked
        for noisy in ("timm", "huggingface_hub", "urllib3", "PIL", "matplotlib", "faster_coco_eval"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


class _DeferredWarnings(logging.Filter):
    """Holds warnings marked ``zoo_deferred`` (a plugin hook that failed) until the command ends.

    They are printed after a command that succeeded; a command that fails says it in its one
    error line, which names the failed plugin whenever the failure is the cause.
    """

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "zoo_deferred", False):
            self.held.append(record)
            return False
        return True

    def release(self) -> None:
        for record in self.held:
            print(f"zoo: warning: {record.getMessage()}", file=sys.stderr)
        self.held.clear()


def _resolve_handler(spec: str):
    module_name, _, function = spec.partition(":")
    return getattr(importlib.import_module(module_name), function)


def _reported_to_launcher(error: ZooError) -> bool:
    """Under ``zoo finetune --nproc``, a worker leaves its error line for the launcher to print once."""
    if paths.worker_reports() is None:  # checked first: outside a worker, torch stays unimported
        return False
    from ..engine import distributed

    return distributed.report_error(str(error))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``zoo`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        args = parser.parse_args(argv)
        args._argv = list(argv) if argv is not None else sys.argv[1:]  # for re-launching under torchrun
        _configure_logging(args.verbose, args.debug)
        deferred = _DeferredWarnings()
        for handler in logging.getLogger().handlers:
            handler.addFilter(deferred)
        if not getattr(args, "handler", None):
            parser.print_help()
            return 0
        code = int(_resolve_handler(args.handler)(args) or 0)
        if code == 0:
            deferred.release()
        return code
    except ZooError as exc:
        if debug:
            traceback.print_exc()
        if not _reported_to_launcher(exc):
            print(f"zoo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `zoo list | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
