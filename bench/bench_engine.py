"""The fine-tune engine, measured side by side in one run:

1. Engine against a hand-written PyTorch loop on the same model, data and steps (a one-stage
   full fine-tune, constant LR): median step time ratio (goal <= 1.02) and final weights equal;
   and the engine's step time with its per-group gradient-flow figures on against off, in
   alternate epochs of the same run (goal <= 1.02).
2. A 5-epoch head-only stage with the feature cache against the same stage without it
   (goal >= 3x faster; cache building included).
3. The same staged job (backbone frozen, then everything at a lower backbone rate) with
   Lightning's ``BackboneFinetuning`` callback: the wall-time ratio (goal: Zoo faster).
   Needs Lightning: run through ``bench/with-lightning``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import timm
import torch
from common import engine_epoch_loader, machine, median, report, write_image_folder
from zoo_classification.task import ClassificationTask

from zoo_core.anatomy import input_config
from zoo_core.engine.api import finetune
from zoo_core.engine.gradflow import GradientFlow
from zoo_core.registry import Registry

ARCH, SIZE, SEED = "resnet10t", 48, 0
logging.basicConfig(level=logging.WARNING)


def inputs_of(model: torch.nn.Module) -> object:
    """The input config the engine would use for ``model`` at the benchmark's size."""
    return input_config(model, Registry.load().plugins.hook, image_size=SIZE)


class HandLoop:
    """The loop a user would write: same model init, data order, optimizer and steps.

    ``epoch()`` runs one epoch (then validates, untimed) and returns its mean step time, so the
    benchmark can run it between the engine's epochs: both see the same machine noise.
    """

    def __init__(self, data: Path, batch: int, lr: float, weight_decay: float) -> None:
        self.task = ClassificationTask()
        loaded = self.task.load_data(data, seed=SEED, val_fraction=0.2)
        torch.manual_seed(SEED)
        self.model = timm.create_model(ARCH, pretrained=False, num_classes=len(loaded.class_names))
        config = inputs_of(self.model)
        self.dataset = self.task.dataset(loaded, "train", input_config=config, augment={})
        self.val_loader = torch.utils.data.DataLoader(
            self.task.dataset(loaded, "val", input_config=config, augment={}), batch_size=64, collate_fn=self.task.collate
        )
        named = list(self.model.named_parameters())
        decay = [p for n, p in named if p.ndim > 1 and not n.endswith(".bias")]
        no_decay = [p for n, p in named if not (p.ndim > 1 and not n.endswith(".bias"))]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, fused=True)  # the engine's optimizer settings
        self.batch = batch
        self.epochs_done = 0

    def epoch(self) -> float:
        loader = engine_epoch_loader(self.dataset, batch=self.batch, collate=self.task.collate, seed=SEED, epoch=self.epochs_done)
        self.model.train()
        started = time.perf_counter()
        steps = 0
        for batch_data in loader:
            loss = torch.nn.functional.cross_entropy(self.model(batch_data.inputs), batch_data.targets)
            loss.backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            loss.item()
            steps += 1
        seconds = (time.perf_counter() - started) / steps
        self.model.eval()  # validation after every epoch, as the engine does (untimed in both)
        with torch.no_grad():
            for batch_data in self.val_loader:
                torch.nn.functional.cross_entropy(self.model(batch_data.inputs), batch_data.targets).item()
        self.epochs_done += 1
        return seconds


@contextlib.contextmanager
def gradient_flow_every_other_epoch(spent: dict[str, float]) -> Iterator[None]:
    """The engine's gradient-flow figures on in odd epochs (1, 3, …) and off in even ones, so on and
    off epochs of one run see the same machine; ``spent`` sums the seconds the calls into the figures
    took, per method (begin and every step's record fall within an epoch's training time, the end
    after it), to measure their cost directly as well."""
    originals = {name: getattr(GradientFlow, name) for name in ("begin_epoch", "record", "end_epoch")}
    epochs = itertools.count()

    def timed(name: str) -> Callable[..., object]:
        def call(self: GradientFlow, *args: object, **kwargs: object) -> object:
            if name == "begin_epoch":
                self.enabled = next(epochs) % 2 == 0
            started = time.perf_counter()
            result = originals[name](self, *args, **kwargs)
            if self.enabled:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - started
            return result

        return call

    for name in originals:
        setattr(GradientFlow, name, timed(name))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(GradientFlow, name, original)


def engine_vs_hand_loop(data: Path, out: Path) -> list[tuple[str, str]]:
    """One hand-loop epoch runs right after each engine epoch (from the engine's own epoch hook);
    the engine's epochs alternate gradient-flow figures on and off."""
    from zoo_core import hookimpl
    from zoo_core.catalog import load_catalog
    from zoo_core.plugins import load_plugins

    epochs, batch, lr, wd = 18, 16, 1e-3, 0.05
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread each: two competing intra-op threads on a small VM are mostly noise
    hand = HandLoop(data, batch, lr, wd)
    hand_steps: list[float] = []

    class Interleave:
        @hookimpl
        def zoo_on_epoch_end(self, run, epoch, metrics):
            hand_steps.append(hand.epoch())

    host = load_plugins()
    host.register(Interleave(), name="bench-interleave")
    overrides = [f"stages.0.epochs={epochs}", "stages.0.schedule=constant", "stages.0.warmup_epochs=0", "stages.0.augment={}",
                 f"stages.0.lr={lr}", f"batch_size={batch}", f"weight_decay={wd}"]
    spent: dict[str, float] = {}
    with gradient_flow_every_other_epoch(spent):
        result = finetune("full-finetune", f"timm:{ARCH}", data, run_dir=out / "engine", pretrained=False, image_size=SIZE,
                          overrides=overrides, seed=SEED, use_cache=False, registry=Registry(host, load_catalog()))  # fmt: skip
    torch.set_num_threads(threads)
    rows = result.history[2:]  # the first epochs warm caches
    engine_steps = [row["train_seconds"] / row["train_steps"] for row in rows]
    ratios = [e / h for e, h in zip(engine_steps, hand_steps[2:])]
    flow_on = ["frozen_checked" in row for row in rows]
    assert any(flow_on) and not all(flow_on)
    on_steps = [step for step, on in zip(engine_steps, flow_on) if on]
    off_steps = [step for step, on in zip(engine_steps, flow_on) if not on]
    flow_cost = median(on_steps) / median(off_steps)
    on_train_seconds = sum(row["train_seconds"] for row in result.history if "frozen_checked" in row)
    inside = spent["begin_epoch"] + spent["record"]  # within train_seconds; end_epoch runs after them
    direct_cost = (on_train_seconds + spent["end_epoch"]) / (on_train_seconds - inside)
    engine_weights = torch.load(result.last_checkpoint, weights_only=True)["model_state_dict"]
    hand_weights = hand.model.state_dict()
    equal = all(torch.equal(engine_weights[k], hand_weights[k]) for k in hand_weights)
    ratio = median(ratios)
    return [
        ("engine median step (1 thread)", f"{median(engine_steps) * 1000:.1f} ms"),
        ("hand loop median step (1 thread)", f"{median(hand_steps[2:]) * 1000:.1f} ms"),
        ("engine / hand loop, median of per-epoch ratios (goal <= 1.02)", f"{ratio:.3f}  {'OK' if ratio <= 1.02 else 'MISSED'}"),
        ("final weights equal (figures on in half the epochs)", str(equal)),
        ("gradient-flow figures: time in them / time without, epochs with them (goal <= 1.02)",
         f"{direct_cost:.3f}  {'OK' if direct_cost <= 1.02 else 'MISSED'}"),
        ("engine step, epochs with figures / alternate epochs without (noise here ±4%)", f"{flow_cost:.3f}"),
    ]


def cache_vs_no_cache(data: Path, out: Path) -> list[tuple[str, str]]:
    overrides = ["stages.0.epochs=5", "batch_size=16"]
    seconds = {}
    for cached in (True, False):
        result = finetune("linear-probe", f"timm:{ARCH}", data, run_dir=out / f"probe-{cached}", pretrained=False,
                          image_size=SIZE, overrides=overrides, seed=SEED, use_cache=cached)
        seconds[cached] = sum(row["seconds"] + row["cache_seconds"] for row in result.history)
        assert all(row["cached"] == cached for row in result.history)
    speedup = seconds[False] / seconds[True]
    return [
        ("5-epoch head-only stage, cache", f"{seconds[True]:.2f} s (cache building and validation included)"),
        ("same stage, no cache", f"{seconds[False]:.2f} s"),
        ("speed-up (goal >= 3x)", f"{speedup:.1f}x  {'OK' if speedup >= 3 else 'MISSED'}"),
    ]


def zoo_vs_lightning(data: Path, out: Path) -> list[tuple[str, str]]:
    try:
        import lightning.pytorch as pl
        from lightning.pytorch.callbacks import BackboneFinetuning
    except ImportError:
        return [("Lightning BackboneFinetuning", "skipped: run with bench/with-lightning to install Lightning for the bench")]
    frozen_epochs, all_epochs, batch, lr = 4, 2, 16, 1e-3
    zoo_seconds = {}
    for bn in ("frozen", "train"):  # Zoo's default, and Lightning's train_bn=True behaviour
        catalog = out / f"zoo-{bn}.toml"
        catalog.write_text(
            f"[recipes.bench-staged]\nbatch_size = {batch}\nweight_decay = 0.0\n"
            f"[[recipes.bench-staged.stages]]\nepochs = {frozen_epochs}\nfreeze = 1\nlr = {lr:g}\nbn = \"{bn}\"\n"
            f"[[recipes.bench-staged.stages]]\nepochs = {all_epochs}\nfreeze = 0\n"
            f"lr = {{ head = {lr:g}, backbone = {lr / 10:g} }}\nbn = \"{bn}\"\n"
        )
        started = time.perf_counter()
        finetune("bench-staged", f"timm:{ARCH}", data, run_dir=out / f"zoo-staged-{bn}", pretrained=False, image_size=SIZE,
                 seed=SEED, registry=Registry.load([catalog]))
        zoo_seconds[bn] = time.perf_counter() - started

    task = ClassificationTask()
    loaded = task.load_data(data, seed=SEED, val_fraction=0.2)
    config = inputs_of(timm.create_model(ARCH, pretrained=False))
    train = task.dataset(loaded, "train", input_config=config, augment={})
    val = task.dataset(loaded, "val", input_config=config, augment={})

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = timm.create_model(ARCH, pretrained=False, num_classes=0)
            self.head = torch.nn.Linear(self.backbone.num_features, len(loaded.class_names))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(x))

        def training_step(self, batch, _):
            return torch.nn.functional.cross_entropy(self(batch.inputs), batch.targets)

        def validation_step(self, batch, _):
            loss = torch.nn.functional.cross_entropy(self(batch.inputs), batch.targets)
            self.log("val_loss", loss, batch_size=len(batch))

        def configure_optimizers(self):
            return torch.optim.AdamW(filter(lambda p: p.requires_grad, self.parameters()), lr=lr, weight_decay=0.0)

    loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True, collate_fn=task.collate)
    val_loader = torch.utils.data.DataLoader(val, batch_size=64, collate_fn=task.collate)
    trainer = pl.Trainer(
        max_epochs=frozen_epochs + all_epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=frozen_epochs, backbone_initial_ratio_lr=0.1, should_align=False)],
    )
    started = time.perf_counter()
    trainer.fit(Module(), loader, val_loader)
    lightning_seconds = time.perf_counter() - started
    ratio = zoo_seconds["frozen"] / lightning_seconds
    return [
        (f"Zoo, {frozen_epochs}+{all_epochs} epochs, BN frozen (default)", f"{zoo_seconds['frozen']:.2f} s (model build and data included)"),
        ("Zoo, same job, bn = \"train\"", f"{zoo_seconds['train']:.2f} s"),
        ("Lightning BackboneFinetuning, same job", f"{lightning_seconds:.2f} s (train_bn=True, its default)"),
        ("Zoo default / Lightning (goal < 1)", f"{ratio:.2f}  {'OK' if ratio < 1 else 'MISSED'}"),
        ("Zoo bn=train / Lightning", f"{zoo_seconds['train'] / lightning_seconds:.2f}"),
    ]


def main() -> None:
    out = Path(tempfile.mkdtemp(prefix="zoo-bench-engine-"))
    data = write_image_folder(out / "data", classes=4, per_class=80, size=SIZE)
    report(f"engine vs hand-written loop, {ARCH} at {SIZE}px ({machine()})", engine_vs_hand_loop(data, out))
    report("feature cache", cache_vs_no_cache(data, out))
    report("staged job vs Lightning", zoo_vs_lightning(data, out))


if __name__ == "__main__":
    main()
