"""FitState: fit(checkpoint=…) after each epoch, fit(resume=…) continues bit for bit; only tuned tensors are saved."""
from __future__ import annotations

import pytest
import torch

from autosub.training.checkpoint import STATE, TENSORS, FitState
from autosub.errors import ConfigError
from autosub.training.trainer import fit


def _states(model, task, selection, **kw):
    states: list[FitState] = []
    res = fit(model, task, selection, epochs=3, lr=3e-3, checkpoint=states.append, **kw)
    return res, states


@pytest.mark.parametrize("selection, cache", [((2,), "auto"), ("all", False)])
def test_resuming_after_an_epoch_gives_the_uninterrupted_run(test_resnet, image_task, selection, cache, tmp_path):
    full, states = _states(test_resnet, image_task, selection, cache=cache)
    assert [s.epoch for s in states] == [1, 2, 3] and states[-1].curve == full.curve
    states[0].save(tmp_path)  # through the files, as a retried Ray trial reads it
    again = fit(test_resnet, image_task, selection, epochs=3, lr=3e-3, cache=cache, resume=FitState.load(tmp_path))
    assert again.resumed_from == 1 and full.resumed_from == 0
    assert again.curve == full.curve and again.train_loss == full.train_loss
    mine, ref = again.model.state_dict(), full.model.state_dict()
    assert all(torch.equal(mine[k], ref[k]) for k in ref)  # the same weights, BN statistics included


def test_the_state_holds_the_tuned_tensors_and_the_optimizer_not_the_trunk(test_resnet, image_task, tmp_path):
    res, states = _states(test_resnet, image_task, (3,))
    last = states[-1]
    names = set(last.tensors)
    assert {"fc.weight", "fc.bias"} <= names and any(k.startswith("layer4.") for k in names)
    assert not any(k.startswith(("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")) for k in names)
    assert any(k.endswith("running_mean") for k in names)  # the tuned block's BatchNorm statistics
    n_trainable = sum(p.numel() for k, p in res.model.named_parameters() if p.requires_grad)
    assert sum(len(s) for s in last.optimizer["state"].values()) > 0  # AdamW moments for every tuned parameter
    assert sum(s["exp_avg"].numel() for s in last.optimizer["state"].values()) == n_trainable
    last.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([TENSORS, STATE])
    back = FitState.load(tmp_path)
    assert back.epoch == 3 and back.curve == res.curve
    assert all(torch.equal(back.tensors[k], v) for k, v in last.tensors.items())
    assert FitState.load(tmp_path / "missing") is None


def test_a_state_from_another_selection_or_a_longer_run_is_refused(test_resnet, image_task):
    _, states = _states(test_resnet, image_task, (3,))
    with pytest.raises(ConfigError, match="same model, selection"):
        fit(test_resnet, image_task, (2,), epochs=3, resume=states[0])
    with pytest.raises(ConfigError, match="epochs=2"):
        fit(test_resnet, image_task, (3,), epochs=2, resume=states[-1])
