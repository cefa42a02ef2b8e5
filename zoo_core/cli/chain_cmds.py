"""``zoo chains``, ``zoo chain`` and ``zoo lineage``."""

from __future__ import annotations

from typing import Any

from .common import print_json, registry_for, table


def cmd_chains(args: Any) -> int:
    registry = registry_for(args)
    if args.name is None:
        chains = sorted(registry.chains.values(), key=lambda chain: chain.name)
        if args.json:
            print_json([{**chain.to_dict(), "origin": str(chain.origin)} for chain in chains])
            return 0
        rows = [(c.name, len(c.steps), c.model, " → ".join(step.name for step in c.steps), c.description) for c in chains]
        print(table(rows, ("CHAIN", "STEPS", "STARTS FROM", "STEPS IN ORDER", "DESCRIPTION")))
        return 0
    chain = registry.chain(args.name)
    if args.json:
        print_json({**chain.to_dict(), "origin": str(chain.origin)})
        return 0
    print(f"{chain.name}: {chain.description}  ({chain.origin})")
    print(f"starts from {chain.model}" + ("" if chain.pretrained else " (random initialisation)") + f"; fresh runs start from {chain.scratch.value}")
    rows = [
        (i + 1, step.name, step.data, chain.recipe_of(step), ", ".join(step.classes) if step.classes else "all", " ".join(step.set) or "-")
        for i, step in enumerate(chain.steps)
    ]
    print(table(rows, ("#", "STEP", "DATA", "RECIPE", "CLASSES", "SET")))
    return 0


def cmd_chain(args: Any) -> int:
    from ..chains import chain_table, run_chain

    choices: dict[str, Any] = {"workers": args.workers, "device": args.device}
    if args.seed is not None:
        choices["seed"] = args.seed
    record = run_chain(
        args.name, args.run_dir, registry=registry_for(args), resume=args.resume, compare_scratch=args.compare_scratch,
        overrides=args.set, **choices,
    )  # fmt: skip
    if args.json:
        print_json(record)
        return 0
    print("\n".join(chain_table(record)))
    print(f"chain record: {args.run_dir}/chain.json; each step's run folder: zoo report {args.run_dir}/01-…")
    return 0


def cmd_lineage(args: Any) -> int:
    from ..lineage import format_lineage, trace_lineage

    lineage = trace_lineage(args.checkpoint)
    if args.json:
        print_json(lineage)
    else:
        print("\n".join(format_lineage(lineage)))
    return 0 if lineage["ok"] else 1
