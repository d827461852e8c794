"""The SubTuning core: which parameters train, in which mode, with which learning rate.

A *selection* is a sorted tuple of block indices (``()`` is the linear probe) or ``"all"`` (full finetuning,
stem included). The new head always trains. Frozen parts stay in eval mode, so their BatchNorm statistics
and dropout are frozen too — which is also what makes the prefix cache exact.
"""
from __future__ import annotations

import numbers
from typing import Iterable, Mapping, Sequence, Union

import torch
from torch import nn

from .blocks import Partition
from ..errors import SelectionError

__all__ = ["FULL", "PROBE", "Selection", "check_block_index", "first_boundary", "freeze", "normalize_blocks",
           "normalize_selection", "param_groups", "set_modes", "trainable_names", "tuned_modules", "tuned_tensors"]

FULL = "all"
PROBE = "probe"
Selection = Union[tuple[int, ...], str]
_FULL_NAMES = ("all", "full")
_PROBE_NAMES = ("probe", "linear_probe", "linear")


def check_block_index(value: object, n_blocks: int, owner: str) -> int:
    """One block index as an int in 0..n-1 (ints and numpy ints only: 1.7 or True is refused, never rounded)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SelectionError(f"The '{owner}' entries must be block indices (ints) 0..{n_blocks - 1}; got {value!r} "
                             f"({type(value).__name__}) instead. List them with autosub.discover_blocks(model).")
    if not 0 <= int(value) < n_blocks:
        raise SelectionError(f"Block index {int(value)} is out of range: the model has {n_blocks} blocks (indices "
                             f"0..{n_blocks - 1}). List them with autosub.discover_blocks(model).")
    return int(value)


def normalize_selection(selection: Iterable[int] | str | int, partition: Partition) -> Selection:
    """Validate a selection against the model's blocks: a sorted tuple of block indices, ``()`` (the linear probe,
    also spelled ``"probe"``) or ``"all"`` (full finetuning). ``None`` is refused: it used to mean a probe silently."""
    n = len(partition)
    if selection is None:
        raise SelectionError("selection=None is ambiguous; say what to train: selection='probe' (the new head only, "
                             "a linear probe), 'all' (full finetuning) or block indices such as (14, 15).")
    if isinstance(selection, str):
        if selection.lower() in _FULL_NAMES:
            return FULL
        if selection.lower() in _PROBE_NAMES:
            return ()
        raise SelectionError(
            f"Unknown selection {selection!r}: use block indices 0..{n - 1}, 'probe' for a linear probe, "
            "or 'all' for full finetuning."
        )
    if isinstance(selection, numbers.Integral) and not isinstance(selection, bool):
        selection = (selection,)
    if not isinstance(selection, Iterable):
        raise SelectionError(f"The 'selection' must be block indices, 'probe' or 'all'; got {selection!r} instead.")
    return tuple(sorted({check_block_index(i, n, "selection") for i in selection}))


def normalize_blocks(candidates: Sequence[int] | None, partition: Partition, owner: str) -> list[int]:
    """Validate the block indices a profile or greedy run considers (None = every block); non-empty, no repeats."""
    if candidates is None:
        return list(range(len(partition)))
    if isinstance(candidates, (str, bytes)) or not isinstance(candidates, Iterable):
        raise SelectionError(f"The 'candidates' parameter of {owner} must be a list of block indices; got "
                             f"{candidates!r} instead.")
    out = [check_block_index(b, len(partition), f"candidates' parameter of {owner}") for b in candidates]
    if not out or len(set(out)) != len(out):
        raise SelectionError(f"The 'candidates' parameter of {owner} must be a non-empty list without repeats; got "
                             f"{list(candidates)!r} instead.")
    return sorted(out)


def first_boundary(selection: Selection, partition: Partition) -> int | None:
    """Where the frozen prefix ends: the first selected block, the head for a linear probe, None for full FT."""
    if selection == FULL:
        return None
    return min(selection) if selection else len(partition)


def trainable_names(selection: Selection, partition: Partition, model: nn.Module) -> set[str]:
    """Names of the parameters that train under ``selection``."""
    if selection == FULL:
        return {name for name, _ in model.named_parameters()}
    names = set(partition.head)
    for i in selection:
        names.update(partition[i].param_names)
    return names


def freeze(model: nn.Module, selection: Selection, partition: Partition) -> int:
    """Set ``requires_grad`` for ``selection`` and return the number of trainable parameters."""
    names = trainable_names(selection, partition, model)
    count = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
        count += p.numel() if name in names else 0
    return count


def set_modes(model: nn.Module, selection: Selection, partition: Partition) -> None:
    """Train mode for the tuned blocks and the head, eval mode (frozen BN, no dropout) for everything else."""
    if selection == FULL:
        model.train()
        return
    model.eval()
    for i in selection:
        for path in partition[i].modules:
            model.get_submodule(path).train()
    if partition.head_module:
        model.get_submodule(partition.head_module).train()


def param_groups(
    model: nn.Module,
    selection: Selection,
    partition: Partition,
    *,
    lr: float,
    weight_decay: float,
    lr_multipliers: Mapping[int, float] | None = None,
) -> list[dict]:
    """AdamW parameter groups: one per tuned block (its own lr multiplier), one for the rest; 1-D params skip decay."""
    owner: dict[str, int] = {}
    for block in partition:
        for name in block.param_names:
            owner[name] = block.index
    mult = dict(lr_multipliers or {})
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        block = owner.get(name, -1)
        decay = weight_decay if p.ndim > 1 else 0.0
        groups.setdefault((block, decay), []).append(p)
    return [
        {"params": ps, "lr": lr * mult.get(block, 1.0), "weight_decay": decay, "block": block}
        for (block, decay), ps in sorted(groups.items(), key=lambda kv: kv[0])
    ]


def tuned_modules(selection: Selection, partition: Partition) -> list[str]:
    """The module paths SubTuning trains under ``selection``: the selected blocks' modules and the head module."""
    mods = [m for i in (() if selection == FULL else selection) for m in partition[i].modules]
    return mods + ([partition.head_module] if partition.head_module else [])


def tuned_tensors(model: nn.Module, selection: Selection, partition: Partition) -> dict[str, torch.Tensor]:
    """The tensors SubTuning changes, copied to the CPU: trainable parameters and the buffers (BatchNorm statistics)
    of tuned modules — everything for full finetuning. The one home for "what a delta / checkpoint holds"."""
    names = trainable_names(selection, partition, model)
    out = {k: v.detach().cpu().clone() for k, v in model.named_parameters() if k in names}
    if selection == FULL:
        out.update({k: v.detach().cpu().clone() for k, v in model.named_buffers()})
        return out
    mods = tuned_modules(selection, partition)
    out.update({k: v.detach().cpu().clone() for k, v in model.named_buffers()
                if any(k.startswith(m + ".") for m in mods)})
    return out
