"""Prefix cache benchmark: training examples/s per block with and without the cache, and the cost of a sweep.

For each model it measures, in one run on this machine: one full-finetune epoch; one single-block SubTuning
epoch per block without the cache (the naive loop); the same with one shared ActivationCache (its one fill
pass counted). It prints a table and writes ``benchmarks/results/cache.json``:

    ratio_naive  = Σ_i epoch time of block i, uncached          ÷ one full-FT epoch
    ratio_cached = (cache fill + Σ_i epoch time of block i, cached) ÷ one full-FT epoch

Anchor (ResNet-50, H200, bf16, 224 px): ≈10 naive, ≈5.3 cached.

    python benchmarks/bench_cache.py            # both models, 64 px, 512 examples
    python benchmarks/bench_cache.py --quick    # 32 px, 256 examples
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

from autosub import ActivationCache, discover_blocks, fit, replace_head  # noqa: E402
from autosub.data.task import Split, Task  # noqa: E402
from autosub.training.trainer import resolve_device  # noqa: E402


def make_model(name: str):
    """tf_efficientnet_lite0 with its real ImageNet weights when the data extra is installed; resnet50 untrained
    (speed does not depend on the weights' values)."""
    if name == "tf_efficientnet_lite0":
        try:
            from autosub.model.zoo import efficientnet_lite0

            return efficientnet_lite0()
        except Exception:  # data extra missing: same architecture, same speed
            pass
    import timm

    return timm.create_model(name, pretrained=False)


def make_task(n: int, px: int, seed: int) -> Task:
    """Real MNIST digits when available (speed is data-independent, so random pixels are an honest fallback)."""
    try:
        from autosub import datasets

        task = datasets.mnist(image_size=px, max_samples=n, val_fraction=0.2, seed=seed)
        return task
    except Exception:
        g = torch.Generator().manual_seed(seed)
        x, y = torch.randn(n, 3, px, px, generator=g), torch.randint(0, 10, (n,), generator=g)
        k = int(n * 0.8)
        return Task(Split(x[:k], y[:k], name="train"), Split(x[k:], y[k:], name="val"), 10)


def bench_model(name: str, task: Task, *, batch_size: int, epochs: int, seed: int) -> dict:
    model = make_model(name)
    part = discover_blocks(model)
    n = len(task.train)
    kw = dict(partition=part, epochs=epochs, batch_size=batch_size, seed=seed, keep_model=False)
    full = fit(model, task, "all", cache=False, **kw)
    full_epoch = n / full.examples_per_s
    t0 = time.perf_counter()
    device = resolve_device(None)
    work = replace_head(copy.deepcopy(model), task.num_classes, seed=seed).to(device)
    cache = ActivationCache(work, part, {"train": task.train, "val": task.val}, device=device, batch_size=128)
    cached_boundaries = cache.ensure(range(len(part)))
    fill = time.perf_counter() - t0
    rows = []
    for b in part:
        plain = fit(model, task, (b.index,), cache=False, **kw)
        fast = fit(model, task, (b.index,), cache=cache, **kw)
        rows.append({"block": b.index, "name": b.name, "plain_ex_s": plain.examples_per_s,
                     "cached_ex_s": fast.examples_per_s, "cached": fast.cached,
                     "speedup": fast.examples_per_s / plain.examples_per_s})
    sweep_plain = sum(n / r["plain_ex_s"] for r in rows)
    sweep_cached = fill + sum(n / r["cached_ex_s"] for r in rows)
    return {
        "model": name, "blocks": len(part), "train_examples": n, "full_ft_ex_s": full.examples_per_s,
        "full_ft_epoch_s": full_epoch, "cache_fill_s": fill, "cached_boundaries": cached_boundaries,
        "ratio_naive": sweep_plain / full_epoch, "ratio_cached": sweep_cached / full_epoch, "per_block": rows,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="32 px, 256 examples")
    ap.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0", "resnet50"])
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--examples", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "cache.json"))
    args = ap.parse_args(argv)
    px = args.image_size or (32 if args.quick else 64)
    n = args.examples or (256 if args.quick else 640)
    torch.manual_seed(args.seed)
    task = make_task(n, px, args.seed)
    results = []
    for name in args.models:
        r = bench_model(name, task, batch_size=args.batch_size, epochs=args.epochs, seed=args.seed)
        results.append(r)
        print(f"\n{name} @ {px}px, {r['train_examples']} train examples, batch {args.batch_size}")
        print(f"{'block':>5} {'name':<14} {'plain ex/s':>11} {'cached ex/s':>12} {'speedup':>8}")
        for row in r["per_block"]:
            print(f"{row['block']:>5} {row['name']:<14} {row['plain_ex_s']:>11.1f} {row['cached_ex_s']:>12.1f} {row['speedup']:>7.2f}x")
        print(f"full FT: {r['full_ft_ex_s']:.1f} ex/s; cache fill {r['cache_fill_s']:.1f}s")
    print(f"\n{'model':<22} {'sweep÷fullFT naive':>19} {'sweep÷fullFT cached':>20}")
    for r in results:
        print(f"{r['model']:<22} {r['ratio_naive']:>19.2f} {r['ratio_cached']:>20.2f}")
    out = {"machine": describe_machine(), "command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])]),
           "image_size": px, "batch_size": args.batch_size, "epochs": args.epochs, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2, sort_keys=True))
    print(f"wrote {args.out}")
    return out


if __name__ == "__main__":
    main()
