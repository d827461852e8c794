"""The one setup path: working copy + fresh head, blocks (discovered / override / Partition), device, view, checks."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from autosub.data.task import Split, Task
from autosub.errors import BlockDiscoveryError, ConfigError, DataError
from autosub.model.blocks import discover_blocks
from autosub.training.setup import blocks_spec, prepare, resolve_device, selection_view, with_head


def sequential() -> nn.Module:
    """A backbone no discovery rule splits (no repeated children of one type with weights)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5))


def test_prepare_copies_with_a_fresh_head_and_never_touches_the_callers_model(test_resnet, image_task):
    before = {k: v.clone() for k, v in test_resnet.state_dict().items()}
    run = prepare(test_resnet, image_task, seed=3)
    assert run.work is not test_resnet and run.work.get_classifier().out_features == image_task.num_classes
    assert all(torch.equal(v, test_resnet.state_dict()[k]) for k, v in before.items())
    assert run.view.test is None and run.partition.names == discover_blocks(run.work).names
    again = run.fresh_copy()  # same seed → the same fresh head
    assert torch.equal(again.get_classifier().weight, run.work.get_classifier().weight)
    assert not torch.equal(run.fresh_copy(seed=4).get_classifier().weight, run.work.get_classifier().weight)


def test_blocks_override_names_and_regex_and_partition(image_task):
    model = sequential()
    with pytest.raises(BlockDiscoveryError, match="Name them yourself"):
        prepare(model, image_task)
    by_names = prepare(model, image_task, blocks=["0", "2"])
    assert by_names.partition.names == ("0", "2") and by_names.partition.head == ("6.weight", "6.bias")
    assert blocks_spec(by_names.partition) == [["0"], ["2"]]
    again = prepare(model, image_task, blocks=by_names.partition)
    assert again.partition is by_names.partition
    with pytest.raises(BlockDiscoveryError, match="does not fit"):
        prepare(model, image_task, blocks=discover_blocks(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2),
                                                                         nn.Linear(2, 3)), blocks=["0", "1"]))


def test_task_checks_come_before_any_training(test_resnet, image_task):
    bad = image_task.train.inputs.clone()
    bad[3, 0, 0, 0] = float("nan")
    nan_task = Task(Split(bad, image_task.train.targets, name="train"), image_task.val, image_task.num_classes)
    with pytest.raises(DataError, match="1 example.*NaN or Inf"):
        prepare(test_resnet, nan_task)
    wrong = Task(Split(torch.randn(8, 5), torch.arange(8) % 2, name="train"),
                 Split(torch.randn(4, 5), torch.arange(4) % 2, name="val"), 2)
    with pytest.raises(DataError, match="could not take inputs of shape"):
        prepare(test_resnet, wrong)
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        prepare("resnet", image_task)


def test_raw_data_forms_are_accepted_where_a_task_is(test_resnet):
    x, y = torch.randn(40, 3, 16, 16), torch.arange(40) % 4
    run = prepare(test_resnet, (x, y))  # as_task: a seeded stratified train/val split
    assert len(run.view.train) + len(run.view.val) == 40 and run.num_classes == 4


def test_resolve_device_refuses_devices_this_machine_lacks():
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'device'"):
        resolve_device("tpu:7")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA device"):
            resolve_device("cuda")


def test_selection_view_drops_only_the_test_split(image_task):
    task = Task(image_task.train, image_task.val, image_task.num_classes, test=image_task.val, meta={"a": 1})
    view = selection_view(task)
    assert view.test is None and view.train is task.train and view.val is task.val and view.meta == {"a": 1}
    view.meta["b"] = 2
    assert "b" not in task.meta


def test_with_head_is_a_deep_copy_in_eval_mode(test_resnet):
    test_resnet.train()
    try:
        work = with_head(test_resnet, 3, seed=0)
    finally:
        test_resnet.eval()
    assert not work.training and work.get_classifier().out_features == 3
    assert next(work.parameters()).data_ptr() != next(test_resnet.parameters()).data_ptr()
