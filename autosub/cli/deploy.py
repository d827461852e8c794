"""``autosub export`` and ``autosub serve-check``: deltas out of a search, and several of them served on one trunk.

A trunk is named as autosub's zoo names it (``efficientnet_lite0``, ``minilm_l6``: real weights from pip
packages, offline) or as a timm architecture plus a local weights file (``--trunk resnet50 --weights w.safetensors``,
read with safetensors or ``torch.load(weights_only=True)``) — the two ways autosub builds a pretrained model.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

__all__ = ["add_parsers", "load_trunk"]

ZOO_TRUNKS = ("efficientnet_lite0", "minilm_l6")


def add_parsers(sub: Any) -> None:
    """Register ``export`` and ``serve-check`` on the ``autosub`` subparsers."""
    exp = sub.add_parser("export", help="turn a saved search result into a delta (tuned blocks + head, verified)")
    exp.add_argument("run_dir", help="a directory written by SearchResult.save (or a run dir holding result/)")
    exp.add_argument("out_dir", help="where the delta goes (autosub.json + delta.safetensors)")
    exp.add_argument("--classes", default=None, help="comma-separated class names, in label order")
    _trunk_args(exp, required=False)
    exp.set_defaults(func=export_command)

    chk = sub.add_parser("serve-check", help="load a trunk and several deltas as one MultiTaskModel, verify it, "
                                             "and print every task's predictions")
    _trunk_args(chk, required=True)
    chk.add_argument("--delta", action="append", required=True, metavar="NAME=DIR",
                     help="a task: its name and delta directory (repeat for more tasks)")
    src = chk.add_mutually_exclusive_group()
    src.add_argument("--inputs", default=None, help="a safetensors (or tensors-only torch) file: one tensor of "
                                                     "images, or input_ids/attention_mask for text")
    src.add_argument("--text", action="append", default=None, help="a text to classify (needs a text trunk)")
    src.add_argument("--random", type=int, default=None, metavar="N", help="N random images (a smoke check)")
    chk.add_argument("--image-size", type=int, default=None, help="size of --random images")
    chk.add_argument("--json", action="store_true", help="print the predictions as JSON")
    chk.add_argument("--seed", type=int, default=0)
    chk.set_defaults(func=serve_check_command)


def load_trunk(name: str, weights: str | None = None) -> torch.nn.Module:
    """A pretrained trunk by zoo name, or a timm architecture with a local weights file."""
    from ..errors import ConfigError
    from ..model import zoo

    if weights is not None:
        return zoo.from_weights(name, weights)
    if name == "efficientnet_lite0":
        return zoo.efficientnet_lite0()
    if name == "minilm_l6":
        return zoo.minilm_l6()
    raise ConfigError(f"--trunk must be one of autosub's zoo models {list(ZOO_TRUNKS)}, or a timm architecture "
                      f"with --weights FILE; got {name!r} without --weights.")


def export_command(args: argparse.Namespace) -> int:
    """``autosub export RUN_DIR OUT_DIR``: SearchResult.load → autosub.export."""
    from ..deploy.delta import export
    from ..errors import ConfigError
    from ..hpo.result import ARTIFACT_JSON, SearchResult

    run = Path(args.run_dir)
    if not (run / ARTIFACT_JSON).exists() and (run / "result" / ARTIFACT_JSON).exists():
        run = run / "result"  # the directory `autosub demo` and search(run_dir=...) write
    if not (run / ARTIFACT_JSON).exists():
        raise ConfigError(f"{args.run_dir} holds no saved search result ({ARTIFACT_JSON}); pass the directory "
                          "given to SearchResult.save (or a run directory with result/ inside).")
    trunk = load_trunk(args.trunk, args.weights) if args.trunk else None
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    delta = export(SearchResult.load(run), args.out_dir, trunk=trunk, classes=classes)
    size = sum(p.stat().st_size for p in Path(args.out_dir).iterdir())
    print(f"wrote {args.out_dir}: blocks {', '.join(delta.tuned_blocks) or '(linear probe)'} + head, "
          f"{len(delta.tensors)} tensors, {size / 2**20:.2f} MiB, trunk {delta.trunk_fingerprint[:12]}")
    return 0


def serve_check_command(args: argparse.Namespace) -> int:
    """``autosub serve-check``: one MultiTaskModel from a trunk + deltas, verified; per-task predictions."""
    from ..deploy.delta import load_delta
    from ..deploy.multitask import MultiTaskModel
    from ..errors import ConfigError

    trunk = load_trunk(args.trunk, args.weights)
    deltas = {}
    for item in args.delta:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--delta takes NAME=DIR; got {item!r}.")
        if name in deltas:
            raise ConfigError(f"--delta names task {name!r} twice.")
        deltas[name] = load_delta(path)
    x = _inputs(args, trunk, deltas)
    mt = MultiTaskModel(trunk, deltas, example_inputs=x, copy_trunk=False)
    with torch.no_grad():
        probs = {name: logits.softmax(-1) for name, logits in mt(x).items()}
    labels = {name: [_label(deltas[name], int(i)) for i in p.argmax(-1)] for name, p in probs.items()}
    top = {name: [round(float(v), 4) for v in p.max(-1).values] for name, p in probs.items()}
    if args.json:
        print(json.dumps({"mode": mt.mode_, "forks": mt.fork_points(), "predictions": labels,
                          "probabilities": top}, sort_keys=True))
        return 0
    print(f"MultiTaskModel: {len(deltas)} tasks on {args.trunk} (mode {mt.mode_}; every task verified equal to "
          f"its standalone model)")
    for name, delta in deltas.items():
        print(f"  {name}: forks at {delta.fork} ({', '.join(delta.tuned_blocks) or 'linear probe'}), "
              f"{delta.num_classes} classes")
    width = max(12, *(len(n) + 2 for n in deltas))
    print(f"\n{'example':<8}" + "".join(f"{n:>{width}}" for n in deltas))
    for i in range(len(next(iter(labels.values())))):
        cells = "".join(f"{f'{labels[n][i]} ({top[n][i]:.2f})':>{width}}" for n in deltas)
        print(f"{i:<8}{cells}")
    return 0


def _trunk_args(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--trunk", required=required, default=None,
                        help=f"a zoo model ({', '.join(ZOO_TRUNKS)}) or a timm architecture with --weights")
    parser.add_argument("--weights", default=None, help="local weights file of the timm --trunk (safetensors or a "
                                                        "tensors-only torch file)")


def _inputs(args: argparse.Namespace, trunk: torch.nn.Module, deltas: dict) -> Any:
    from ..errors import ConfigError, DataError
    from ..model.zoo import read_weights

    if args.inputs:
        tensors = read_weights(args.inputs)
        if not tensors:
            raise DataError(f"{args.inputs} holds no tensors.")
        return next(iter(tensors.values())) if len(tensors) == 1 else tensors
    if args.text:
        tokenizer = getattr(trunk, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError(f"--text needs a text trunk with a tokenizer (e.g. minilm_l6); {args.trunk} has none.")
        max_length = next((d.preprocessing.get("max_length") for d in deltas.values()
                           if d.preprocessing and d.preprocessing.get("max_length")), 128)
        enc = tokenizer(list(args.text), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    size = args.image_size or next((d.preprocessing.get("image_size") for d in deltas.values()
                                    if d.preprocessing and d.preprocessing.get("image_size")), None)
    if size is None:
        size = int((getattr(trunk, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[-1])
    g = torch.Generator().manual_seed(args.seed)
    return torch.randn(args.random or 4, 3, int(size), int(size), generator=g)


def _label(delta: Any, index: int) -> str:
    return delta.classes[index] if delta.classes else str(index)
