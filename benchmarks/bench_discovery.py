"""How often does ``discover_blocks`` find a valid partition? Over every timm architecture, or (``--hf``) over
every Hugging Face ``transformers`` model type.

**timm mode** (the default). A model counts as valid when every parameter is in exactly one of stem / block i /
head, every block's module paths exist, are called modules (no ``ModuleList``, whose hooks never fire) and cover
exactly its parameters, and there are at least 2 blocks.

**--hf mode.** For every model type in ``transformers.CONFIG_MAPPING``: take its model class (``AutoModel``'s,
else the first task mapping that lists the type; types with none are counted as ``no_model_class``), build it
from a tiny config (2 layers per stack, small widths) — if that fails from the default config with 2 layers per
stack, then from the default config — and check the block partition against its *repeated stacks*:

* a **layer** is a module of a non-``torch.nn`` class (a model's own ``BertLayer``, ``SwinStage``, ...), or an
  ``nn.ModuleList`` / ``nn.Sequential`` whose weighted children are all layers of one class;
* a **top-level repeated stack** is an ``nn.ModuleList`` with >= 2 weighted children that are layers of one class,
  and that does not lie inside a child of another ``nn.ModuleList`` whose weighted children are all layers (so
  the list of sub-layers inside a T5 block, or the convolutions inside a codec's residual unit, do not count:
  they are parts of a layer). Lists of built-in modules (``Linear`` heads, ``Embedding`` codebooks, norms)
  never count;
* a **stage body** is, for each child of a top-level stack, the largest ``nn.ModuleList`` / ``nn.Sequential``
  inside it (or the child itself) whose weighted children are layers of one class and that holds at least half
  the child's parameters, when it has >= 2 weighted children: the blocks of a stage, e.g. HF ConvNeXt
  ``encoder.stages.i.layers`` or Swin ``encoder.layers.i.blocks`` (a deeper list inside a stage's only layer,
  such as the convolutions an HGNet layer concatenates, is part of that layer);
* a partition **covers** a stack when no parameter under the stack is in the stem or the head and no block holds
  parameters of two of its children (each child is one block, or split into several).

A model type is ``covered`` when discovery succeeds, both granularities are valid partitions (as in timm mode)
and every repeated stack is covered. The share is ``covered / built models with >= 1 repeated stack``; models
without one are reported apart. Models are built under ``torch.device('meta')`` (no memory, no init), each in a
worker process with its own timeout.

    python benchmarks/bench_discovery.py                 # all of timm.list_models()
    python benchmarks/bench_discovery.py --quick         # a fixed sample of 100 timm models
    python benchmarks/bench_discovery.py --hf            # every transformers model type
    python benchmarks/bench_discovery.py --hf --quick    # a fixed list of common families
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shlex
import signal
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

HF_QUICK = ("albert", "bart", "beit", "bert", "clip", "convnext", "deberta-v2", "deit", "distilbert", "donut-swin",
            "efficientnet", "focalnet", "funnel", "gpt2", "llama", "marian", "mbart", "mistral", "mobilevit",
            "pegasus", "qwen2", "regnet", "resnet", "roberta", "segformer", "swin", "swinv2", "t5", "vit",
            "wav2vec2", "whisper", "xlm")


class _Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Timeout()


def _init_worker() -> None:
    import logging
    import warnings

    import torch

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    logging.disable(logging.WARNING)  # transformers warns about every default config it builds
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)


def check_partition(model, part) -> str | None:
    """Return why the partition is invalid, or None when it is valid."""
    from torch import nn

    names = [n for n, _ in model.named_parameters()]
    listed = [*part.stem, *part.head, *(n for b in part for n in b.param_names)]
    if len(listed) != len(set(listed)):
        dup = [n for n, c in Counter(listed).items() if c > 1][:3]
        return f"parameters listed twice: {dup}"
    if set(listed) != set(names):
        return f"parameters missing: {sorted(set(names) - set(listed))[:3]}"
    if len(part) < 2:
        return f"only {len(part)} block(s)"
    modules = dict(model.named_modules())
    for b in part:
        if not b.modules or any(m not in modules for m in b.modules):
            return f"block {b.name!r} has bad module paths {b.modules}"
        if any(isinstance(modules[m], (nn.ModuleList, nn.ModuleDict)) for m in b.modules):
            return f"block {b.name!r} lists a ModuleList/ModuleDict (never called: its hooks never fire) {b.modules}"
        covered = {n for n in names if any(n.startswith(m + ".") for m in b.modules)}
        if not covered <= set(b.param_names):
            return f"block {b.name!r}: modules {b.modules} hold parameters of other groups"
        # what no module path reaches must be a "loose" parameter, owned directly by a module shared with other
        # groups (e.g. NesT's levels.i.pos_embed): it is in param_names but in no module of the block
        for n in set(b.param_names) - covered:
            owner = n.rpartition(".")[0]
            under_owner = {k for k in names if k.startswith(owner + ".")} if owner else set(names)
            if under_owner <= set(b.param_names):
                return f"block {b.name!r}: parameter {n!r} is not covered by {b.modules}"
    return None


def loose_parameters(part) -> int:
    """Block parameters that no module path of their block reaches (owned by a module shared with others)."""
    return sum(1 for b in part for n in b.param_names if not any(n.startswith(m + ".") for m in b.modules))


# ------------------------------------------------------------------------------------------------ timm


def run_one(args: tuple[str, int]) -> dict:
    """Build one timm architecture without weights and check its block partition."""
    name, timeout = args
    import timm
    import torch

    from autosub.model.blocks import discover_blocks

    row: dict = {"model": name, "ok": False}
    t0 = time.perf_counter()
    signal.alarm(timeout)
    try:
        try:
            with torch.device("meta"):
                model = timm.create_model(name, pretrained=False)
            row["device"] = "meta"
        except _Timeout:
            raise
        except Exception:
            model = timm.create_model(name, pretrained=False)
            row["device"] = "cpu"
        row["build_s"] = round(time.perf_counter() - t0, 3)
        t1 = time.perf_counter()
        try:
            part = discover_blocks(model)
        except Exception as exc:
            row["reason"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            return row
        stage = discover_blocks(model, granularity="stage")
        row["discover_s"] = round(time.perf_counter() - t1, 4)
        row.update(source=part.source, blocks=len(part), stages=len(stage), head=part.head_module,
                   params=sum(p.numel() for p in model.parameters()))
        row["loose_params"] = loose_parameters(part)
        reason = check_partition(model, part) or check_partition(model, stage)
        row["ok"] = reason is None
        if reason:
            row["reason"] = reason
    except _Timeout:
        row["reason"] = f"timeout after {timeout}s"
    except Exception as exc:  # model construction failed on meta and on cpu
        row["reason"] = f"build failed: {type(exc).__name__}: {str(exc)[:200]}"
        row["build_failed"] = True
    finally:
        signal.alarm(0)
        row["total_s"] = round(time.perf_counter() - t0, 3)
    return row


def timm_summary(rows: list[dict], elapsed: float) -> tuple[dict, list[dict]]:
    built = [r for r in rows if not r.get("build_failed")]
    valid = [r for r in rows if r["ok"]]
    failures = [r for r in rows if not r["ok"]]
    summary = {
        "architectures": len(rows),
        "built": len(built),
        "valid": len(valid),
        "share_valid": round(len(valid) / max(1, len(rows)), 4),
        "share_valid_of_built": round(len(valid) / max(1, len(built)), 4),
        "by_source": dict(Counter(r.get("source", "none") for r in valid)),
        "built_on": dict(Counter(r.get("device", "none") for r in rows)),
        "with_loose_params": sum(1 for r in valid if r.get("loose_params")),
        "median_blocks": sorted(r["blocks"] for r in valid)[len(valid) // 2] if valid else None,
        "elapsed_s": round(elapsed, 1),
    }
    return summary, [{k: r.get(k) for k in ("model", "reason", "source", "blocks")} for r in failures]


# -------------------------------------------------------------------------------------------- transformers

_LAYER_COUNTS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
                 "num_encoder_layers", "num_decoder_layers")
_WIDTHS = {"hidden_size": 32, "d_model": 32, "n_embd": 32, "intermediate_size": 64, "d_ff": 64, "ffn_dim": 64,
           "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "num_attention_heads": 2, "n_head": 2,
           "encoder_attention_heads": 2, "decoder_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16,
           "num_experts": 4, "num_local_experts": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
           "moe_intermediate_size": 64}


def shrink_config(cfg, *, widths: bool, seen: set | None = None) -> None:
    """2 layers per stack (and per stage of ``depths``); with ``widths`` also small hidden sizes; sub-configs too."""
    from transformers import PretrainedConfig

    seen = set() if seen is None else seen
    if id(cfg) in seen:
        return
    seen.add(id(cfg))
    depths = getattr(cfg, "depths", None)
    staged = isinstance(depths, (list, tuple)) and bool(depths) and all(isinstance(d, int) for d in depths)
    if staged:  # hierarchical: keep the stages (num_hidden_layers may alias their count), 2 layers in each
        cfg.depths = [min(d, 2) for d in depths]
    sizes = ({} if staged else {k: 2 for k in _LAYER_COUNTS}) | (_WIDTHS if widths else {})
    for key, small in sizes.items():
        value = getattr(cfg, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > small:
            try:
                setattr(cfg, key, small)
            except Exception:  # a read-only derived attribute
                pass
    for value in list(vars(cfg).values()):
        if isinstance(value, PretrainedConfig):
            shrink_config(value, widths=widths, seen=seen)


def model_class(model_type: str):
    """The class ``AutoModel`` builds for ``model_type``, else the first task mapping's; None when there is none."""
    import transformers
    import transformers.models.auto.modeling_auto as auto

    mappings = [auto.MODEL_MAPPING_NAMES] + [v for k, v in sorted(vars(auto).items()) if k.startswith("MODEL_FOR_")
                                             and k.endswith("_MAPPING_NAMES") and isinstance(v, dict)]
    for mapping in mappings:
        name = mapping.get(model_type)
        if name:
            return getattr(transformers, name if isinstance(name, str) else name[0])
    return None


def repeated_stacks(model) -> list[tuple[str, list[str]]]:
    """The model's repeated stacks (module docstring): (path, weighted child paths), top-level ones first."""
    from torch import nn

    sizes: Counter = Counter()
    for n, p in model.named_parameters():
        parts = n.split(".")[:-1]
        for i in range(len(parts) + 1):
            sizes[".".join(parts[:i])] += max(p.numel(), 1)

    def kids(path: str, mod) -> list[tuple[str, nn.Module]]:
        pre = f"{path}." if path else ""
        return [(pre + c, m) for c, m in mod.named_children() if sizes[pre + c]]

    def is_layer(path: str, mod) -> bool:
        if isinstance(mod, (nn.ModuleList, nn.Sequential)):
            return uniform(kids(path, mod), 1)
        return not type(mod).__module__.startswith("torch.nn")

    def uniform(children, least: int) -> bool:
        return (len(children) >= least and len({type(m) for _, m in children}) == 1
                and all(is_layer(p, m) for p, m in children))

    top, shadows = [], []
    for path, mod in model.named_modules():
        if not path or not isinstance(mod, nn.ModuleList) or any(path.startswith(s + ".") for s in shadows):
            continue
        children = kids(path, mod)
        if children and all(is_layer(p, m) for p, m in children):
            shadows.append(path)
            if uniform(children, 2):
                top.append((path, [p for p, _ in children]))
    bodies = []
    for _, children in top:
        for child in children:
            best = None
            for sub, mod in model.get_submodule(child).named_modules(prefix=child):
                if isinstance(mod, (nn.ModuleList, nn.Sequential)) and 2 * sizes[sub] >= sizes[child]:
                    inner = kids(sub, mod)
                    if uniform(inner, 1) and (best is None or sizes[sub] > sizes[best[0]]):
                        best = (sub, [p for p, _ in inner])
            if best and len(best[1]) >= 2:  # a stage of one layer is covered by any partition
                bodies.append(best)
    return top + bodies


def uncovered(part, stacks: list[tuple[str, list[str]]]) -> list[str]:
    """The stacks the partition does not cover, each with why."""
    owner = part.owner()
    out = []
    for path, children in stacks:
        under = [n for n in owner if n.startswith(path + ".")]
        frozen = [n for n in under if owner[n] in ("stem", "head")]
        if frozen:
            out.append(f"{path}: {len(frozen)} parameter(s) in the {owner[frozen[0]]}, e.g. {frozen[0]}")
            continue
        touched: dict[int, set[str]] = {}
        for n in under:
            child = next(c for c in children if n == c or n.startswith(c + "."))
            touched.setdefault(owner[n], set()).add(child)
        merged = next((sorted(c) for c in touched.values() if len(c) > 1), None)
        if merged:
            out.append(f"{path}: one block holds {merged[:2]}")
    return out


def run_hf_one(args: tuple[str, int]) -> dict:
    """Build one transformers model type from a tiny config on the meta device and check its partition."""
    model_type, timeout = args
    import torch
    from transformers import CONFIG_MAPPING

    from autosub.errors import BlockDiscoveryError
    from autosub.model.blocks import discover_blocks

    row: dict = {"type": model_type, "outcome": "build_failed"}
    t0 = time.perf_counter()
    signal.alarm(timeout)
    try:
        try:
            cls = model_class(model_type)
        except Exception as exc:  # the modeling file needs a package that is not installed
            row["reason"] = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
            return row
        if cls is None:
            row.update(outcome="no_model_class", reason="no model class in any auto mapping")
            return row
        row["cls"] = cls.__name__
        model, errors = None, []
        for attempt in ("tiny", "shallow", "default"):
            try:
                cfg = CONFIG_MAPPING[model_type]()
                if attempt != "default":
                    shrink_config(cfg, widths=attempt == "tiny")
                with torch.device("meta"):
                    model = cls(cfg)
                row["config"] = attempt
                break
            except _Timeout:
                raise
            except Exception as exc:
                errors.append(f"{attempt}: {type(exc).__name__}: {str(exc).strip()[:150]}")
        if model is None:
            row["reason"] = " | ".join(errors)
            return row
        row["build_s"] = round(time.perf_counter() - t0, 3)
        stacks = repeated_stacks(model)
        row["stacks"] = len(stacks)
        t1 = time.perf_counter()
        try:
            part = discover_blocks(model)
            stage = discover_blocks(model, granularity="stage")
        except BlockDiscoveryError as exc:
            row.update(outcome="refused", reason=str(exc)[:300])
            return row
        except Exception as exc:
            row.update(outcome="error", reason=f"{type(exc).__name__}: {str(exc)[:300]}")
            return row
        row["discover_s"] = round(time.perf_counter() - t1, 4)
        row.update(source=part.source, blocks=len(part), stages=len(stage), first=part.names[0], last=part.names[-1])
        invalid = check_partition(model, part) or check_partition(model, stage)
        missed = uncovered(part, stacks)
        if invalid:
            row.update(outcome="invalid", reason=invalid)
        elif missed:
            row.update(outcome="partial", reason="; ".join(missed)[:400], uncovered=len(missed))
        else:
            row["outcome"] = "covered" if stacks else "no_stack"
    except _Timeout:
        row.update(outcome="timeout", reason=f"timeout after {timeout}s")
    finally:
        signal.alarm(0)
        row["total_s"] = round(time.perf_counter() - t0, 3)
    return row


def hf_summary(rows: list[dict], elapsed: float) -> tuple[dict, list[dict]]:
    outcomes = Counter(r["outcome"] for r in rows)
    built = [r for r in rows if r["outcome"] not in ("no_model_class", "build_failed", "timeout")]
    with_stacks = [r for r in built if r.get("stacks")]
    covered = [r for r in with_stacks if r["outcome"] == "covered"]
    summary = {
        "model_types": len(rows),
        "built": len(built),
        "built_with": dict(Counter(r.get("config") for r in built)),
        "not_built": {k: outcomes[k] for k in ("no_model_class", "build_failed", "timeout") if outcomes[k]},
        "with_repeated_stack": len(with_stacks),
        "covered": len(covered),
        "share_covered": round(len(covered) / max(1, len(with_stacks)), 4),
        "outcomes": dict(outcomes),
        "by_source": dict(Counter(r.get("source", "none") for r in covered)),
        "median_blocks": sorted(r["blocks"] for r in covered)[len(covered) // 2] if covered else None,
        "elapsed_s": round(elapsed, 1),
    }
    failures = [{k: r.get(k) for k in ("type", "cls", "outcome", "reason", "source", "blocks")}
                for r in built if r["outcome"] not in ("covered", "no_stack")]
    return summary, failures


# ------------------------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hf", action="store_true", help="every transformers model type instead of timm")
    parser.add_argument("--quick", action="store_true",
                        help="timm: a fixed random sample of 100 architectures; --hf: a fixed list of families")
    parser.add_argument("--limit", type=int, default=None, help="only the first N architectures")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=None, help="seconds per model (timm 120, --hf 60)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default benchmarks/results/discovery[_hf][_quick].json")
    args = parser.parse_args(argv)
    timeout = args.timeout or (60 if args.hf else 120)
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"discovery{'_hf' if args.hf else ''}{'_quick' if args.quick else ''}.json")

    if args.hf:
        from transformers import CONFIG_MAPPING

        names = sorted(CONFIG_MAPPING.keys())
        if args.quick:
            names = [n for n in HF_QUICK if n in CONFIG_MAPPING]
        worker, key = run_hf_one, "type"
    else:
        import timm

        names = timm.list_models()
        if args.quick:
            names = sorted(random.Random(0).sample(names, min(100, len(names))))
        worker, key = run_one, "model"
    if args.limit:
        names = names[: args.limit]
    t0, load0 = time.perf_counter(), os.getloadavg()
    rows = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers, initializer=_init_worker, maxtasksperchild=100 if args.hf else 20) as pool:
        for i, row in enumerate(pool.imap_unordered(worker, [(n, timeout) for n in names]), 1):
            rows.append(row)
            if i % 50 == 0 or i == len(names):
                print(f"[{i}/{len(names)}] {time.perf_counter() - t0:.0f}s", flush=True)
    rows.sort(key=lambda r: r[key])
    elapsed = time.perf_counter() - t0
    summary, failures = (hf_summary if args.hf else timm_summary)(rows, elapsed)

    from machine import describe_machine

    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    machine = {**describe_machine(), "loadavg_start": load0, "loadavg_end": os.getloadavg()}  # shared machine
    if args.hf:
        import transformers

        machine["transformers"] = transformers.__version__
    result = {"command": command, "machine": machine, "summary": summary, "failures": failures, "models": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True))

    print(f"\nfailures ({len(failures)}):")
    for r in failures:
        label = f"{r[key]} [{r['outcome']}]" if args.hf else r[key]
        print(f"  {label:<45} {(r.get('reason') or '')[:150]}")
    print("\n| metric | value |\n|---|---|")
    for k, v in summary.items():
        print(f"| {k} | {v} |")
    print(f"\ncommand: {command}\nwrote {out}")
    share = summary["share_covered"] if args.hf else summary["share_valid"]
    return 0 if share >= 0.95 else 1


if __name__ == "__main__":
    raise SystemExit(main())
