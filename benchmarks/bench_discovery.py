"""How often does ``discover_blocks`` find a valid partition? Runs it over every architecture in timm.

A model counts as valid when every parameter is in exactly one of stem / block i / head, every block's
module paths exist and cover exactly its parameters, and there are at least 2 blocks. Models are built
without weights under ``torch.device('meta')`` (no memory, no init); when meta construction fails the model is
built on the CPU instead. Each model runs in a worker process with its own timeout.

    python benchmarks/bench_discovery.py            # all of timm.list_models()
    python benchmarks/bench_discovery.py --quick    # a fixed sample of 100 models
    python benchmarks/bench_discovery.py --limit 20 --workers 1
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import random
import shlex
import signal
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class _Timeout(Exception):
    pass


def _alarm(_signum, _frame):
    raise _Timeout()


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGALRM, _alarm)


def check_partition(model, part) -> str | None:
    """Return why the partition is invalid, or None when it is valid."""
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


def machine() -> dict:
    """Where the numbers came from."""
    import timm
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
            "timm": timm.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fixed random sample of 100 architectures")
    parser.add_argument("--limit", type=int, default=None, help="only the first N architectures")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=120, help="seconds per model")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "discovery.json")
    args = parser.parse_args(argv)

    import timm

    names = timm.list_models()
    if args.quick:
        names = sorted(random.Random(0).sample(names, min(100, len(names))))
    if args.limit:
        names = names[: args.limit]
    t0 = time.perf_counter()
    rows = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers, initializer=_init_worker, maxtasksperchild=20) as pool:
        for i, row in enumerate(pool.imap_unordered(run_one, [(n, args.timeout) for n in names]), 1):
            rows.append(row)
            if i % 50 == 0 or i == len(names):
                ok = sum(r["ok"] for r in rows)
                print(f"[{i}/{len(names)}] valid {ok}/{i}  {time.perf_counter() - t0:.0f}s", flush=True)
    rows.sort(key=lambda r: r["model"])
    elapsed = time.perf_counter() - t0

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
    command = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    result = {"command": command, "machine": machine(), "summary": summary,
              "failures": [{k: r.get(k) for k in ("model", "reason", "source", "blocks")} for r in failures],
              "models": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True))

    print(f"\nfailures ({len(failures)}):")
    for r in failures:
        print(f"  {r['model']:<45} {r.get('reason', '')[:110]}")
    print("\n| metric | value |\n|---|---|")
    for k, v in summary.items():
        print(f"| {k} | {v} |")
    print(f"\ncommand: {command}\nwrote {args.out}")
    return 0 if summary["share_valid"] >= 0.95 else 1


if __name__ == "__main__":
    raise SystemExit(main())
