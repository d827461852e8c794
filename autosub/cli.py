"""The ``autosub`` command: ``autosub demo`` runs SubTuning end to end on shipped weights and data, offline."""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time

import torch
from tqdm.auto import tqdm


def _demo(args: argparse.Namespace) -> int:
    """EfficientNet-Lite0 (real ImageNet weights) on real MNIST in low data: probe vs full FT vs single blocks."""
    from . import datasets, zoo
    from .blocks import discover_blocks
    from .cache import ActivationCache
    from .heads import replace_head
    from .train import evaluate, fit, resolve_device

    torch.manual_seed(args.seed)
    model = zoo.efficientnet_lite0()
    part = discover_blocks(model)
    task = datasets.mnist(model=model, image_size=args.image_size, samples_per_class=args.samples_per_class,
                          val_fraction=0.1, seed=args.seed)
    n_blocks = len(part)
    singles = args.blocks if args.blocks is not None else sorted({n_blocks - 1, (2 * n_blocks) // 3, n_blocks // 3})
    runs: list[tuple[str, object]] = [("linear probe", ()), *[(f"block {b} ({part[b].name})", (b,)) for b in singles],
                                      ("full finetuning", "all")]
    print(f"EfficientNet-Lite0 (ImageNet weights, {n_blocks} blocks) -> MNIST digits, "
          f"{len(task.train)} train / {len(task.val)} val / {len(task.test)} test examples at {args.image_size}px, "
          f"{args.epochs} epochs each")
    start = time.perf_counter()
    device = resolve_device(None)
    work = replace_head(copy.deepcopy(model), task.num_classes, seed=args.seed).to(device)
    cache = ActivationCache(work, part, {"train": task.train, "val": task.val}, device=device, batch_size=128)
    cache.ensure([b for _, sel in runs if sel != "all" for b in ([min(sel)] if sel else [n_blocks])])
    rows = []
    for label, sel in tqdm(runs, desc="autosub demo", unit="run"):
        res = fit(model, task, sel, partition=part, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                  seed=args.seed, cache=cache if sel != "all" else False)
        rows.append((label, res.trainable_params, res.score, evaluate(res.model, task.test), res.wall_time))
    print(f"\n{'selection':<28} {'trainable':>10} {'val acc':>8} {'test acc':>9} {'time':>7}")
    for label, params, val, test, secs in rows:
        print(f"{label:<28} {params:>10,} {val:>8.3f} {test:>9.3f} {secs:>6.1f}s")
    print(f"total {time.perf_counter() - start:.0f}s. The test split was read only for this final table.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (kept in one place so ``--help`` documents them all)."""
    parser = argparse.ArgumentParser(prog="autosub", description="Automated SubTuning.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="SubTuning on shipped EfficientNet-Lite0 weights and real MNIST, offline")
    demo.add_argument("--samples-per-class", type=int, default=50, help="training examples per digit (low data)")
    demo.add_argument("--image-size", type=int, default=32)
    demo.add_argument("--epochs", type=int, default=5)
    demo.add_argument("--lr", type=float, default=1e-3)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--blocks", type=int, nargs="*", default=None, help="single blocks to SubTune")
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``autosub`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .errors import AutoSubError

    try:
        return args.func(args)
    except AutoSubError as exc:
        print(f"autosub: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
