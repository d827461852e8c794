"""Selections, freezing, modes and parameter groups."""
from __future__ import annotations

import pytest

from autosub.model.blocks import discover_blocks
from autosub.errors import SelectionError
from autosub.model.subtune import FULL, first_boundary, freeze, normalize_selection, param_groups, set_modes


def test_normalize_selection(test_resnet):
    part = discover_blocks(test_resnet)
    assert normalize_selection([3, 1, 3], part) == (1, 3)
    assert normalize_selection(2, part) == (2,)
    assert normalize_selection(None, part) == () == normalize_selection("linear", part)
    assert normalize_selection("all", part) == FULL
    with pytest.raises(SelectionError, match="out of range"):
        normalize_selection([-1], part)
    with pytest.raises(SelectionError, match="Unknown selection"):
        normalize_selection("everything", part)
    with pytest.raises(SelectionError, match="block indices"):
        normalize_selection(["x"], part)


def test_first_boundary(test_resnet):
    part = discover_blocks(test_resnet)
    assert first_boundary((2, 3), part) == 2
    assert first_boundary((), part) == len(part)
    assert first_boundary(FULL, part) is None


def test_freeze_modes_and_groups(test_resnet):
    import copy

    model = copy.deepcopy(test_resnet)
    part = discover_blocks(model)
    n = freeze(model, (1, 3), part)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(part[1].param_names) | set(part[3].param_names) | set(part.head)
    assert n == sum(p.numel() for p in model.parameters() if p.requires_grad)
    set_modes(model, (1, 3), part)
    assert not model.training and model.get_submodule(part[1].modules[0]).training
    assert not model.get_submodule(part[0].modules[0]).training
    groups = param_groups(model, (1, 3), part, lr=1e-3, weight_decay=0.1, lr_multipliers={3: 10.0})
    lrs = {(g["block"], g["weight_decay"]): g["lr"] for g in groups}
    assert lrs[(3, 0.1)] == pytest.approx(1e-2) and lrs[(1, 0.1)] == pytest.approx(1e-3)
    assert all(g["weight_decay"] == 0.0 for g in groups if all(p.ndim <= 1 for p in g["params"]))
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])
