"""A Ray Tune trial that hosts a fused group: several study trials trained as one
:class:`~autosub.training.fused.FusedGroup` on one worker (``TrainingConfig.fuse`` with ``backend="ray"``).

The searcher (:class:`~autosub.hpo.engines.ray_search.SelectorSearcher` with ``fuse_trials``) asks the study for
up to K trials and hands them to one Tune trial as ``config["members"]``; :func:`train_group` trains them here,
through the search's :class:`~autosub.hpo.fusing.SearchGroups` (built once per worker: the trunk copy and the
prefix cache stay between Tune trials), and the searcher tells the study each member's end. The Tune trial holds
the resources of one trial (``resources_per_trial``: fractional GPUs still apply), and the group's default memory
limit is scaled to that share of the device.

What Tune sees, per epoch: ``score`` — the best score of the members still training (ASHA keeps or stops the group
on it: there is no per-member pruning inside a Ray group) — with every member's score under ``scores`` and the
members that left (failed) under ``ended``; at the end ``final_members``: each member's values and attributes, or
its ``fail_reason``. The final checkpoint holds each finished member's tuned tensors under
``members/<number>/tuned.safetensors`` and the record (a retried worker re-reports it). No per-epoch checkpoint:
a group whose worker dies is retried from epoch 0 (its K optimizer states would make the per-epoch checkpoint K
times an unfused one's). A member the group's memory limit refuses trains alone first (``fused=False``,
``unfused_reason``); a member that diverges or raises fails alone and the group goes on.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ray import tune

from ...errors import SearchAborted
from ...training.checkpoint import TENSORS, selection_metadata
from ...training.fused import FusionError
from ..space import Candidate
from .ray_search import MEMBERS, RECORD, json_default, candidate_of, fetch_payload, where_am_i

__all__ = ["train_group"]

log = logging.getLogger(__name__)


def train_group(config: dict[str, Any], payload: list, epochs: int = 1,
                resources: dict[str, float] | None = None) -> None:
    """One Tune trial that trains ``config["members"]`` as a fused group on this worker (module docs).

    ``payload``: [the ObjectRef of (run_trial, SearchGroups)]; ``resources``: the Tune trial's resources (its
    device share scales the group's default memory limit).
    """
    run_trial, groups = fetch_payload(payload)
    where = where_am_i(int(config["number"]))
    ckpt = tune.get_checkpoint()
    if ckpt is not None:  # a retry: a finished group reports its record; an unfinished one starts again
        with ckpt.as_directory() as d:
            if (Path(d) / RECORD).exists():
                tune.report(json.loads((Path(d) / RECORD).read_text()), checkpoint=ckpt)
                return
    groups.memory_share = device_share(resources or {})
    group = groups.open()
    group.fail_all(RuntimeError("a stopped Tune trial's group"))  # a reused worker: nothing left from the last
    started, t0 = time.time(), time.perf_counter()
    members = {int(m["number"]): candidate_of(m) for m in config["members"]}
    scores: dict[int, float] = {}
    peak = dict.fromkeys(members, 0)
    done: dict[int, dict[str, Any]] = {}  # number → {"values", "attrs", "seconds"} or {"fail_reason", "seconds"}
    tensors: dict[int, dict[str, Any]] = {}
    alone = [(n, cand, why) for n, cand in members.items() if (why := _join(groups, group, n, cand, scores))]
    for number, cand, why in alone:  # refused by the group: trained alone, as unfused
        t1 = time.perf_counter()
        try:
            out = run_trial(cand, None)
        except Exception as exc:
            done[number] = _failed(exc, time.perf_counter() - t1, {"fused": False, "unfused_reason": why})
            continue
        done[number] = {"values": [float(v) for v in out.values], "seconds": round(time.perf_counter() - t1, 4),
                        "attrs": {**out.attrs, "fused": False, "unfused_reason": why}}
        if out.model is not None and groups.tensors is not None:
            tensors[number] = groups.tensors(out.model, cand.selection)
    reported: set[int] = set()  # members whose end a report carried (the searcher tells the study at once)
    ends: list[float] = []
    epoch = 0
    while group.active:
        for n in group.active:
            peak[n] = max(peak[n], len(group.active))
        try:
            group.run_epoch()
            ended = group.pop_finished()
        except Exception as exc:  # the group itself raised: its members fail with the reason
            log.warning("fused group of %d trials raised %s: %s", len(group.active), type(exc).__name__, exc)
            ended = group.pop_finished() + group.fail_all(exc)
        epoch += 1
        ends.append(time.time())
        for o in ended:
            fused = {"fused": True, "fused_k": peak[o.key]}
            if o.status == "complete":
                out = o.outcome
                done[o.key] = {"values": [float(v) for v in out.values], "seconds": round(o.seconds, 4),
                               "attrs": {**out.attrs, **fused, "epoch_end_times": list(ends)}}
                if out.model is not None and groups.tensors is not None:
                    tensors[o.key] = groups.tensors(out.model, members[o.key].selection)
            else:
                done[o.key] = _failed(o.error or RuntimeError("unknown"), o.seconds, fused)
        if group.active and epoch < epochs:  # the scheduler sees the group's best member
            left = {n: d for n, d in done.items() if n not in reported}
            reported.update(left)
            live = {n: scores[n] for n in group.active if n in scores}
            tune.report({**where, "epoch": epoch, "final": False, "score": max(live.values(), default=float("-inf")),
                         "scores": json.dumps(live), "ended": json.dumps(left, default=json_default)})
    finished = [d["values"][0] for d in done.values() if "values" in d]
    final = {**where, "epoch": epochs, "final": True, "score": max(finished, default=float("-inf")),
             "started_at": started, "seconds": round(time.perf_counter() - t0, 4),
             "final_members": json.dumps(done, default=json_default)}
    aborted = next((d for d in done.values() if d.get("abort")), None)
    if aborted is not None:
        final.update(fail_reason=aborted["fail_reason"], abort=True)
    with tempfile.TemporaryDirectory() as d:
        from safetensors.torch import save_file

        for number, tuned in tensors.items():
            (Path(d) / MEMBERS / str(number)).mkdir(parents=True)
            save_file({k: v.contiguous() for k, v in tuned.items()}, str(Path(d) / MEMBERS / str(number) / TENSORS),
                      metadata=selection_metadata(members[number].selection))
        (Path(d) / RECORD).write_text(json.dumps(final, default=json_default))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(d))


def device_share(resources: dict[str, float]) -> float:
    """The part of its device one Tune trial holds: its GPU fraction, else its CPUs over this node's."""
    gpu = float(resources.get("gpu", 0) or 0)
    if gpu > 0:
        return min(1.0, gpu)
    cpu = float(resources.get("cpu", 1) or 1)
    return min(1.0, cpu / max(1, os.cpu_count() or 1))


def _join(groups: Any, group: Any, number: int, cand: Candidate, scores: dict[int, float]) -> str:
    """Add one member to the group; "" when it joined, else why it trains alone."""
    why = groups.fusable(cand)
    if why:
        return why

    def record(epoch: int, score: float) -> None:
        scores[number] = float(score)

    try:
        if group.add(number, cand, record):
            return ""
        return "it does not fit the group's memory limit"
    except FusionError as exc:
        return f"the model cannot be trained fused: {exc}"
    except Exception as exc:  # the group refused it: training it alone records the same error as unfused
        return f"the fused group refused it: {type(exc).__name__}: {exc}"


def _failed(exc: BaseException, seconds: float, attrs: dict[str, Any]) -> dict[str, Any]:
    return {"fail_reason": f"{type(exc).__name__}: {exc}", "seconds": round(seconds, 4), "attrs": attrs,
            "abort": isinstance(exc, SearchAborted)}
