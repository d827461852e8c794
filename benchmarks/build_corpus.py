"""Build the layer-predictor corpus: autosub's own finetuning profile + the per-block statistics, per task.

One JSON per (model, dataset, variant) under ``autosub/selection/corpus/`` (shipped with the package): the measured
profile (``Profile.to_dict()``: one 1-seed, full-fidelity entry per block, plus the linear-probe and full-finetune
baselines), the statistics (:func:`autosub.selection.stats.block_stats`) and the wall/CPU time of both. Entries are
written as they finish, and an entry already on disk is skipped, so an interrupted build resumes where it stopped;
``--stats-only`` recomputes only the statistics of the entries on disk (after a change to ``stats.py``).

Real models × real datasets × variants, all offline (``autosub[data]`` plus the ``--no-deps`` data packages):

    models    EfficientNet-Lite0 (16 blocks), MobileNetV2 (torchvision, 17), EfficientNet-Lite1 (21), MiniLM-L6 (6)
    images    MNIST, UCI digits, animal silhouettes — 32 px; variants s20 (20/class), s8 (8/class), c5 (classes 0–4)
    texts     Rotten Tomatoes, tweets, fine-food reviews — 32 tokens, 40/class
    profile   2 epochs, 1 seed, batch 16, lr 5e-3 (images) / 1e-3 (texts), fidelity "full"; val capped at 250;
              seeds 1 and 2 run separately (``--profile-seed``) and are merged into each entry as ``repeats``

Entries run round-robin over (model, dataset) so a partial build covers as many pairs as possible; ``--max-minutes``
(default 40) stops starting new ones after that long. Torch runs on one thread (on a shared 2-core machine two
threads were 2–8× slower per step than one).

How long it took (``benchmarks/results/corpus_build.json``): the 30 entries are sized for ~40 min on an idle 2-core
CPU; on the shared one (load average 5–12) two 40-minute passes built 24 of them (43.9 + 40.6 min; the c5 variants
of digits and animals are not built), plus 1.6 min to recompute the statistics (``--stats-only``) and 26.7 min for
six second-seed profiles (the noise ceiling, ``benchmarks/results/corpus_seed1/``). Later (two
processes of one thread each, beside the test suite) the other 18 second seeds took 6.4 + 6.7 min and all 24 third seeds
(``corpus_seed2/``) 7.9 + 7.8 min; merging is instant.

    PYTHONPATH=. python benchmarks/build_corpus.py                 # the shipped corpus (≤ 40 min here)
    PYTHONPATH=. python benchmarks/build_corpus.py --quick         # 2 small entries into /tmp (a smoke test)
    PYTHONPATH=. python benchmarks/build_corpus.py --stats-only    # recompute the statistics only
    PYTHONPATH=. python benchmarks/build_corpus.py --profile-seed 1 --out benchmarks/results/corpus_seed1
    PYTHONPATH=. python benchmarks/build_corpus.py --profile-seed 2 --out benchmarks/results/corpus_seed2
    PYTHONPATH=. python benchmarks/build_corpus.py --merge-repeats benchmarks/results/corpus_seed1 \
        benchmarks/results/corpus_seed2                              # fold the repeats into the shipped entries
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402

import autosub  # noqa: E402
from autosub import datasets, zoo  # noqa: E402
from autosub.data.task import Task  # noqa: E402
from autosub.selection.profiling import write_json  # noqa: E402
from autosub.selection.stats import block_stats  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "autosub" / "selection" / "corpus"
RESULTS = ROOT / "benchmarks" / "results"
VAL_CAP = 250
IMAGE_LR, TEXT_LR = 5e-3, 1e-3
EPOCHS, BATCH = 2, 16

MODELS: dict[str, Callable[[], Any]] = {
    "lite0": zoo.efficientnet_lite0, "mnv2": zoo.mobilenet_v2, "lite1": zoo.efficientnet_lite1,
    "minilm": zoo.minilm_l6,
}
IMAGE_DATA = {"mnist": datasets.mnist, "digits": datasets.digits, "animals": datasets.animals}
TEXT_DATA = {"rotten": datasets.rotten_tomatoes, "tweets": datasets.tweets, "food": datasets.fine_food}
IMAGE_VARIANTS = {"s20": dict(samples_per_class=20, image_size=32), "s8": dict(samples_per_class=8, image_size=32),
                  "c5": dict(samples_per_class=20, image_size=32, classes=(0, 1, 2, 3, 4))}
TEXT_VARIANTS = {"s40": dict(samples_per_class=40, max_length=32)}


def entries() -> list[dict]:
    """Every corpus entry, round-robin: each variant over all (model, dataset) pairs before the next variant."""
    out = []
    pairs = [(m, d) for d in IMAGE_DATA for m in ("lite0", "mnv2", "lite1")]
    text_pairs = [("minilm", d) for d in TEXT_DATA]
    for v, (name, opts) in enumerate(IMAGE_VARIANTS.items()):
        for m, d in pairs:
            out.append({"id": f"{m}__{d}__{name}", "model": m, "dataset": d, "variant": name, "options": opts,
                        "lr": IMAGE_LR, "kind": "image"})
        if v == 0:  # the text pairs right after the first image round: every (model, dataset) pair early
            for m, d in text_pairs:
                for tname, topts in TEXT_VARIANTS.items():
                    out.append({"id": f"{m}__{d}__{tname}", "model": m, "dataset": d, "variant": tname,
                                "options": topts, "lr": TEXT_LR, "kind": "text"})
    return out


def make_task(entry: dict, model: Any, seed: int = 0) -> Task:
    """The entry's task (seeded), its validation split capped at VAL_CAP examples (stratified, seeded)."""
    opts = dict(entry["options"])
    classes = opts.pop("classes", None)
    if entry["kind"] == "image":
        task = IMAGE_DATA[entry["dataset"]](model=model, seed=seed, **opts)
    else:
        task = TEXT_DATA[entry["dataset"]](model=model, seed=seed, **opts)
    if classes is not None:
        task = datasets.select_classes(task, classes)
    return cap_val(task, VAL_CAP, seed)


def cap_val(task: Task, cap: int, seed: int) -> Task:
    """Keep at most ``cap`` validation examples, the same share of each class (seeded)."""
    if len(task.val) <= cap:
        return task
    from sklearn.model_selection import train_test_split

    y = task.val.targets.numpy()
    keep, _ = train_test_split(range(len(y)), train_size=cap, stratify=y, random_state=seed)
    task.val = task.val.subset(torch.as_tensor(sorted(keep)))
    return task


def run_entry(entry: dict, model: Any, *, stats_only: bool, previous: dict | None, profile_seed: int = 0) -> dict:
    """Statistics (timed) then the profile (timed) of one entry; with ``stats_only`` the profile is kept.

    ``profile_seed`` changes only the training randomness of the profile (head init, batch order), not the data.
    """
    task = make_task(entry, model)
    t0, c0 = time.perf_counter(), time.process_time()
    stats = block_stats(model, task, seed=0)
    stats_wall, stats_cpu = time.perf_counter() - t0, time.process_time() - c0
    record = dict(previous or {})
    if not stats_only:
        t0, c0 = time.perf_counter(), time.process_time()
        prof = autosub.profile(model, task, epochs=EPOCHS, seeds=1, lr=entry["lr"], batch_size=BATCH,
                               fidelity="full", baselines=True, seed=profile_seed, progress=False)
        record.update(profile=prof.to_dict(), profile_wall=time.perf_counter() - t0,
                      profile_cpu=time.process_time() - c0)
    record.update({k: entry[k] for k in ("id", "model", "dataset", "variant", "kind", "lr")},
                  options={k: (list(v) if isinstance(v, tuple) else v) for k, v in entry["options"].items()},
                  stats=stats.to_dict(), stats_wall=stats_wall, stats_cpu=stats_cpu,
                  n_train=len(task.train), n_val=len(task.val), num_classes=task.num_classes,
                  epochs=EPOCHS, batch_size=BATCH, profile_seed=profile_seed, autosub_version=autosub.__version__)
    return record


def merge_repeats(folders: list[Path], corpus: Path = CORPUS) -> dict[str, list[int]]:
    """Fold repeat profiles (``--profile-seed N --out folder`` runs) into the corpus entries' JSON as ``repeats``.

    Each repeat keeps its seed, per-block scores (block order), profile and statistics wall times and command; a
    repeat of a seed the entry already holds is replaced, so merging again is harmless. Returns the seeds per entry.
    """
    from autosub.selection.predictor import load_corpus, load_seed_profiles

    entries = load_corpus(corpus)
    merged: dict[str, list[int]] = {}
    for folder in folders:
        scores = load_seed_profiles(folder, entries)
        for entry_id, values in sorted(scores.items()):
            source = json.loads((folder / f"{entry_id}.json").read_text())
            path = corpus / f"{entry_id}.json"
            record = json.loads(path.read_text())
            seed = int(source["profile_seed"])
            repeat = {"profile_seed": seed, "scores": [float(v) for v in values],
                      "profile_wall": source.get("profile_wall"), "stats_wall": source.get("stats_wall"),
                      "command": source.get("command"), "source": str(folder.relative_to(ROOT))
                      if folder.resolve().is_relative_to(ROOT) else str(folder)}
            others = [r for r in record.get("repeats", []) if int(r["profile_seed"]) != seed]
            record["repeats"] = sorted([*others, repeat], key=lambda r: r["profile_seed"])
            write_json(record, path)
            merged[entry_id] = [int(record.get("profile_seed", 0)), *(r["profile_seed"] for r in record["repeats"])]
    return merged


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="corpus folder (default: autosub/selection/corpus)")
    ap.add_argument("--quick", action="store_true", help="2 small entries into /tmp/autosub-corpus-quick")
    ap.add_argument("--stats-only", action="store_true", help="recompute the statistics of the entries on disk")
    ap.add_argument("--max-minutes", type=float, default=40.0, help="start no new entry after this long")
    ap.add_argument("--only", default=None, help="comma-separated entry ids (default: all)")
    ap.add_argument("--profile-seed", type=int, default=0,
                    help="training seed of the profiles (another seed into another --out measures the noise ceiling)")
    ap.add_argument("--merge-repeats", type=Path, nargs="+", default=None, metavar="FOLDER",
                    help="fold the repeat profiles in these folders into the corpus entries (no training)")
    args = ap.parse_args(argv)
    if args.merge_repeats:
        merged = merge_repeats([f.resolve() for f in args.merge_repeats], args.out or CORPUS)
        counts = sorted({len(v) for v in merged.values()})
        print(f"merged repeats into {len(merged)} entries (seeds per entry: {counts})")
        return 0
    torch.set_num_threads(1)
    out = args.out or (Path("/tmp/autosub-corpus-quick") if args.quick else CORPUS)
    out.mkdir(parents=True, exist_ok=True)
    todo = entries()
    if args.quick:
        todo = [dict(e, options=dict(e["options"], samples_per_class=4)) for e in todo
                if e["id"] in ("lite0__digits__s20", "minilm__rotten__s40")]
    if args.only:
        wanted = set(args.only.split(","))
        todo = [e for e in todo if e["id"] in wanted]
    command = "PYTHONPATH=. python benchmarks/build_corpus.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    models: dict[str, Any] = {}
    done, skipped = [], []
    for entry in todo:
        path = out / f"{entry['id']}.json"
        previous = json.loads(path.read_text()) if path.exists() else None
        if previous is not None and not args.stats_only:
            skipped.append(entry["id"])
            continue
        if previous is None and args.stats_only:
            continue
        minutes = (time.perf_counter() - start) / 60
        if minutes > args.max_minutes:
            print(f"stopping after {minutes:.1f} min (--max-minutes {args.max_minutes}); rerun to resume")
            break
        if entry["model"] not in models:
            models = {entry["model"]: MODELS[entry["model"]]()}  # one model in memory at a time
        t0 = time.perf_counter()
        record = run_entry(entry, models[entry["model"]], stats_only=args.stats_only, previous=previous,
                           profile_seed=args.profile_seed)
        if args.stats_only:  # the profile's command and machine stay; the statistics' are added
            record.update(stats_machine=describe_machine(), stats_command=command)
        else:
            record.update(machine=describe_machine(), command=command)
        write_json(record, path)
        done.append(entry["id"])
        prof = record["profile"]
        best = prof["ranking"][0]
        print(f"{entry['id']:<28} train {record['n_train']:>4}  blocks {len(prof['entries']):>2}  "
              f"profile {record['profile_wall']:6.1f}s  stats {record['stats_wall']:5.1f}s "
              f"({record['stats_wall'] / record['profile_wall']:.1%})  best block {best} "
              f"({prof['entries'][best]['mean']:.3f})  [{time.perf_counter() - t0:.0f}s]", flush=True)
    wall = time.perf_counter() - start
    summary = {"command": command, "machine": describe_machine(), "wall_time_s": wall, "built": done,
               "skipped_existing": skipped, "stats_only": args.stats_only, "corpus": str(out),
               "n_entries_on_disk": len(list(out.glob("*.json")))}
    if not args.quick and args.out is None:
        log = RESULTS / "corpus_build.json"
        history = json.loads(log.read_text()).get("runs", []) if log.exists() else []
        write_json({"runs": [*history, summary]}, log)
    print(f"built {len(done)} entries in {wall / 60:.1f} min ({len(skipped)} already on disk) → {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
