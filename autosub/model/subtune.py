"""The SubTuning core: which parameters train, in which mode, with which learning rate.

A *selection* is a sorted tuple of block indices (``()`` is the linear probe) or ``"all"`` (full finetuning,
stem included). The new head always trains. Frozen parts stay in eval mode, so their BatchNorm statistics
and dropout are frozen too — which is also what makes the prefix cache exact.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Union

from torch import nn

from .blocks import Partition
from ..errors import SelectionError

FULL = "all"
Selection = Union[tuple[int, ...], str]


def normalize_selection(selection: Iterable[int] | str | int | None, partition: Partition) -> Selection:
    """Validate a selection against the model's blocks and return it as a sorted tuple (or ``"all"``)."""
    n = len(partition)
    if selection is None:
        return ()
    if isinstance(selection, str):
        if selection.lower() in ("all", "full"):
            return FULL
        if selection.lower() in ("none", "linear", "linear_probe"):
            return ()
        raise SelectionError(
            f"Unknown selection {selection!r}: use a list of block indices 0..{n - 1}, () for a linear probe, "
            "or 'all' for full finetuning."
        )
    if isinstance(selection, int):
        selection = (selection,)
    out = []
    for i in selection:
        if isinstance(i, bool) or not isinstance(i, int):
            try:
                i = int(i)  # numpy ints
            except (TypeError, ValueError):
                raise SelectionError(f"Selection entries must be block indices (ints); got {i!r}.") from None
        if not 0 <= i < n:
            raise SelectionError(
                f"Block index {i} is out of range: the model has {n} blocks (indices 0..{n - 1}). "
                "List them with autosub.discover_blocks(model)."
            )
        out.append(int(i))
    return tuple(sorted(set(out)))


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
