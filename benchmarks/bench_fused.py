"""Fused multi-trial training: aggregate training examples/s of K trials fused vs the same K trials one at a time.

For K = 1, 2, 4, 8 the same K trials (different selections, learning rates, weight decays and seeds, batch 32) run
(a) one by one with ``autosub.fit`` and (b) as one ``autosub.training.fused.fit_many`` group, both from one shared
prefix cache (filled once, outside the clock, as in a search). The clock covers everything each path does per
trial — working copies, training, validation, and for (b) the group's verification and memory probe — so the
ratio is what a search would see. (a) and (b) alternate within each repeat (load drifts on a shared machine), and
``speedup[K]`` is the median over ``--repeats`` of the paired ratio seconds (a) / seconds (b) of one repeat; the
examples/s columns are from the median seconds (the machine load is written too).

Model: EfficientNet-Lite0 with its real ImageNet weights (``autosub.zoo``) on real MNIST digits at 32 px on the CPU;
``--device cuda`` runs the GPU variant (224 px, bf16 autocast). Where the weight/data packages are missing (the GPU
image has neither) it falls back to timm's ``efficientnet_lite0`` with random weights on random images of the same
shape — throughput does not depend on the pixels — and says so in the output.

    python benchmarks/bench_fused.py --quick                 # CPU, 32 px, 256 train rows, 1 epoch, 1 repeat
    python benchmarks/bench_fused.py                         # CPU, 32 px, 512 train rows, 1 epoch, 3 repeats
    python benchmarks/bench_fused.py --device cuda           # GPU, 224 px, 2048 train rows (≤ 5 min on an H200)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

import autosub  # noqa: E402
from autosub.data.task import Split, Task  # noqa: E402
from autosub.training.fused import TrialSpec, fit_many  # noqa: E402
from autosub.training.setup import prepare  # noqa: E402

# Selections a search on EfficientNet-Lite0 (16 blocks) would try: late single blocks and pairs, one early block.
SELECTIONS = [(15,), (14,), (12, 15), (13,), (11, 14), (10,), (5,), (8, 13)]


def load(image_size: int, n_train: int, n_val: int, seed: int, device: str) -> tuple[torch.nn.Module, Task, str]:
    """EfficientNet-Lite0 + MNIST when the packages are there; else random weights and random images (same shapes)."""
    try:
        model = autosub.zoo.efficientnet_lite0()
        task = autosub.datasets.mnist(model=model, image_size=image_size, max_samples=n_train, seed=seed)
        task.val = Split(task.val.inputs[:n_val], task.val.targets[:n_val], name="val")
        task.test = None
        return model, task, "tf_efficientnet_lite0 (ImageNet weights) on MNIST"
    except Exception as exc:  # the GPU image ships neither the weights nor the data packages
        import timm

        print(f"(no real weights/data: {type(exc).__name__}: {exc}; random weights and images of the same shape)")
        torch.manual_seed(seed)
        model = timm.create_model("efficientnet_lite0", pretrained=False).eval()
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n_train + n_val, 3, image_size, image_size, generator=g)
        y = torch.arange(n_train + n_val) % 10
        task = Task(Split(x[:n_train], y[:n_train], name="train"), Split(x[n_train:], y[n_train:], name="val"), 10)
        return model, task, "efficientnet_lite0 (random weights) on random images"


def specs_for(k: int, epochs: int) -> list[TrialSpec]:
    lrs = [3e-3, 1e-3, 5e-3, 2e-3, 8e-4, 4e-3, 1.5e-3, 6e-3]
    wds = [0.05, 0.01, 0.05, 0.0, 0.02, 0.05, 0.01, 0.03]
    return [TrialSpec(SELECTIONS[i], lr=lrs[i], weight_decay=wds[i], epochs=epochs, seed=i, key=i) for i in range(k)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 train rows, 1 repeat (a few minutes on 2 cores)")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--ks", default="1,2,4,8", help="group sizes")
    ap.add_argument("--train", type=int, default=None)
    ap.add_argument("--val", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=None, help="default 32 on the CPU, 224 on a GPU")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (quick: 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default benchmarks/results/fused[_quick|_cuda].json")
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    size = args.image_size or (224 if cuda else 32)
    n_train = args.train or (2048 if cuda else (256 if args.quick else 512))
    n_val = args.val or (512 if cuda else 128)
    repeats = args.repeats or (1 if args.quick else 3)
    ks = [int(k) for k in args.ks.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    out_path = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / (
        "fused" + ("_cuda" if cuda else "") + ("_quick" if args.quick else "") + ".json")
    load0 = os.getloadavg()

    model, task, what = load(size, n_train, n_val, args.seed, args.device)
    part = autosub.discover_blocks(model)
    setup = prepare(model, task, blocks=part, seed=args.seed, device=args.device)
    boundaries = sorted({min(s) for s in SELECTIONS[:max(ks)]})
    t0 = time.perf_counter()
    cache = setup.cache(boundaries, batch_size=args.batch_size)
    print(f"{what}: {len(part)} blocks, {len(task.train)} train / {len(task.val)} val at {size}px, batch "
          f"{args.batch_size}, {args.epochs} epoch(s), device {setup.device}; cache filled at {boundaries} in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    kw = dict(blocks=part, batch_size=args.batch_size, device=setup.device, cache=cache)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def one_by_one(specs: list[TrialSpec]) -> tuple[float, list[float]]:
        sync()
        t = time.perf_counter()
        scores = [autosub.fit(model, setup.view, s.selection, epochs=s.epochs, lr=s.lr, weight_decay=s.weight_decay,
                              seed=s.seed, keep_model=False, **kw).score for s in specs]
        sync()
        return time.perf_counter() - t, scores

    def fused(specs: list[TrialSpec]) -> tuple[float, list[float]]:
        sync()
        t = time.perf_counter()
        outs = fit_many(model, setup.view, specs, keep_models=False, **kw)
        sync()
        return time.perf_counter() - t, [o.result.score for o in outs]

    fused(specs_for(1, 1))  # warm-up (allocator, kernels, thread pools) outside the clock
    rows: dict[int, dict] = {}
    for k in ks:
        specs = specs_for(k, args.epochs)
        examples = k * len(task.train) * args.epochs
        seq_s, fus_s, same = [], [], True
        for r in range(repeats):
            order = [(one_by_one, seq_s), (fused, fus_s)] if r % 2 == 0 else [(fused, fus_s), (one_by_one, seq_s)]
            got = {}
            for fn, times in order:
                seconds, scores = fn(specs)
                times.append(seconds)
                got[fn.__name__] = scores
            same = same and got["one_by_one"] == got["fused"]
        seq, fus = statistics.median(seq_s), statistics.median(fus_s)
        paired = [a / b for a, b in zip(seq_s, fus_s)]
        rows[k] = {"examples": examples, "seconds_one_by_one": seq_s, "seconds_fused": fus_s,
                   "examples_per_s_one_by_one": examples / seq, "examples_per_s_fused": examples / fus,
                   "speedup": statistics.median(paired), "speedup_runs": paired, "same_val_scores": same,
                   "loadavg": os.getloadavg()}
        print(f"K={k}: one by one {examples / seq:8.1f} ex/s, fused {examples / fus:8.1f} ex/s, speedup "
              f"{rows[k]['speedup']:.2f}× (runs {', '.join(f'{x:.2f}' for x in paired)}; same val scores: {same}; "
              f"load {os.getloadavg()[0]:.1f})", flush=True)

    result = {
        "speedup": {str(k): rows[k]["speedup"] for k in ks},
        "runs": {str(k): v for k, v in rows.items()},
        "config": {"model": what, "blocks": len(part), "selections": [list(s) for s in SELECTIONS[:max(ks)]],
                   "train": len(task.train), "val": len(task.val), "image_size": size, "epochs": args.epochs,
                   "batch_size": args.batch_size, "repeats": repeats, "device": str(setup.device),
                   "amp": cuda, "quick": args.quick, "seed": args.seed},
        "machine": {**describe_machine(), "loadavg_start": load0, "loadavg_end": os.getloadavg()},
        "command": "python " + " ".join(["benchmarks/bench_fused.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    print(f"\n{'K':>3} {'one by one ex/s':>16} {'fused ex/s':>11} {'speedup':>8}  per repeat")
    for k in ks:
        r = rows[k]
        print(f"{k:>3} {r['examples_per_s_one_by_one']:>16.1f} {r['examples_per_s_fused']:>11.1f} "
              f"{r['speedup']:>7.2f}×  {' '.join(f'{x:.2f}' for x in r['speedup_runs'])}")
    print(f"load average {load0[0]:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
    print(f"wrote {out_path}")
    return result


if __name__ == "__main__":
    main()
