"""Selections, freezing, modes and parameter groups."""
from __future__ import annotations

import numpy as np
import pytest

from autosub.model.blocks import discover_blocks
from autosub.errors import SelectionError
from autosub.model.subtune import (FULL, first_boundary, freeze, normalize_blocks, normalize_selection, param_groups,
                                   set_modes, tuned_tensors)


def test_normalize_selection(test_resnet):
    part = discover_blocks(test_resnet)
    assert normalize_selection([3, 1, 3], part) == (1, 3)
    assert normalize_selection(2, part) == (2,)
    assert normalize_selection("probe", part) == () == normalize_selection((), part) == normalize_selection("linear", part)
    assert normalize_selection("all", part) == FULL
    assert normalize_selection(np.array([2, 0]), part) == (0, 2)  # numpy ints are block indices
    with pytest.raises(SelectionError, match="ambiguous.*'probe'.*'all'"):
        normalize_selection(None, part)  # 0.1 silently trained a linear probe
    with pytest.raises(SelectionError, match="out of range"):
        normalize_selection([-1], part)
    with pytest.raises(SelectionError, match="Unknown selection"):
        normalize_selection("everything", part)
    with pytest.raises(SelectionError, match="block indices"):
        normalize_selection(["x"], part)
    for bad in ((1.7,), (True,), (1.0,)):  # never rounded or coerced: (1.7,) used to become (1,)
        with pytest.raises(SelectionError, match="block indices"):
            normalize_selection(bad, part)


def test_normalize_blocks_checks_candidates(test_resnet):
    part = discover_blocks(test_resnet)
    assert normalize_blocks(None, part, "profile") == list(range(len(part)))
    assert normalize_blocks([2, 0], part, "profile") == [0, 2]
    for bad in ([], [0, 0], [len(part)], "01", [0.5]):
        with pytest.raises(SelectionError, match="candidates|block ind|out of range"):
            normalize_blocks(bad, part, "profile")


def test_tuned_tensors_hold_the_tuned_blocks_head_and_their_buffers(test_resnet):
    part = discover_blocks(test_resnet)
    got = tuned_tensors(test_resnet, (1,), part)
    params = dict(test_resnet.named_parameters())
    expected_params = set(part[1].param_names) | set(part.head)
    assert {k for k in got if k in params} == expected_params
    bn_stats = {k for k in got if k.endswith("running_mean")}
    assert bn_stats and all(k.startswith(part[1].modules) for k in bn_stats)  # tuned BatchNorm stats travel too
    assert set(tuned_tensors(test_resnet, FULL, part)) == set(test_resnet.state_dict())


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
