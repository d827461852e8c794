"""as_task: splits (sizes, stratification, seeds, disjointness), low-data subsampling, adapters, validation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset, TensorDataset

from autosub.data.task import Task
from autosub.errors import ConfigError, DataError
from autosub.data.sources import as_task


def ids_task(n=200, classes=4, **kw):
    """Inputs carry their own index, so a split's examples can be traced back to the source rows."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1)
    y = np.arange(n) % classes
    return as_task(x, y, **kw), y


def rows(split) -> set[int]:
    return set(split.inputs[:, 0].long().tolist())


def test_split_sizes_and_stratification():
    task, _ = ids_task(val_fraction=0.25)
    assert isinstance(task, Task) and task.num_classes == 4
    assert (len(task.train), len(task.val)) == (150, 50)
    assert task.val.targets.bincount().tolist() in ([13, 13, 12, 12], [12, 13, 12, 13], [13, 12, 13, 12],
                                                    [12, 12, 13, 13], [13, 12, 12, 13], [12, 13, 13, 12])
    assert task.train.inputs.dtype == torch.float32 and task.train.targets.dtype == torch.long


def test_train_val_test_are_disjoint_and_cover_the_data():
    task, y = ids_task()
    train, val = rows(task.train), rows(task.val)
    assert not train & val and len(train | val) == 200
    # labels travel with their inputs
    assert all(int(y[i]) == int(t) for i, t in zip(task.val.inputs[:, 0].long(), task.val.targets))


def test_same_seed_same_split_and_other_seed_differs():
    a, _ = ids_task(seed=3, samples_per_class=5)
    b, _ = ids_task(seed=3, samples_per_class=5)
    c, _ = ids_task(seed=4, samples_per_class=5)
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.val.inputs, b.val.inputs)
    assert rows(a.val) != rows(c.val) and rows(a.train) != rows(c.train)


def test_samples_per_class_subsamples_train_only():
    full, _ = ids_task(seed=1)
    low, _ = ids_task(seed=1, samples_per_class=3)
    assert low.train.targets.bincount().tolist() == [3, 3, 3, 3]
    assert rows(low.train) <= rows(full.train)  # drawn from the train part, never from val
    assert torch.equal(low.val.inputs, full.val.inputs)
    assert low.meta["train_before_subsampling"] == len(full.train)


def test_max_samples_is_stratified_and_keeps_every_class():
    task, _ = ids_task(n=300, classes=3, max_samples=10)
    counts = task.train.targets.bincount().tolist()
    assert sum(counts) == 10 and min(counts) >= 3
    # imbalanced data: the rare class still keeps an example
    y = np.array([0] * 90 + [1] * 10)
    t = as_task(torch.randn(100, 2), y, max_samples=6)
    assert len(t.train) == 6 and set(t.train.targets.tolist()) == {0, 1}


def test_test_tuple_and_dataset_adapters():
    x, y = torch.randn(40, 3, 8, 8), torch.arange(40) % 2
    task = as_task(TensorDataset(x, y), test=(x[:6].numpy(), y[:6].numpy()))
    assert task.train.inputs.shape[1:] == (3, 8, 8) and len(task.test) == 6
    assert torch.equal(task.test.inputs, x[:6])


class CountingDataset(Dataset):
    """A torchvision-style dataset with ``.targets``: labels are known without loading inputs."""

    def __init__(self, n=50):
        self.targets = [i % 5 for i in range(n)]
        self.calls = 0

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        self.calls += 1
        return torch.full((1, 4, 4), float(i)), self.targets[i]


def test_dataset_with_targets_loads_only_kept_examples():
    ds = CountingDataset()
    task = as_task(ds, samples_per_class=1, image_size=6, mean=(0.0,) * 3, std=(1.0,) * 3)
    assert ds.calls == len(task.train) + len(task.val) == 5 + 10
    assert task.train.inputs.shape == (5, 3, 6, 6)


def test_image_folder(tmp_path):
    from PIL import Image

    for c, (name, colour) in enumerate([("cat", (255, 0, 0)), ("dog", (0, 0, 255))]):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.new("RGB" if i % 2 else "L", (20 + i, 12), colour if i % 2 else 255 * c).save(
                tmp_path / name / f"{i}.png")
    task = as_task(tmp_path, image_size=16, val_fraction=0.4)
    assert task.meta["classes"] == ["cat", "dog"] and task.num_classes == 2
    assert task.train.inputs.shape == (6, 3, 16, 16) and len(task.val) == 4
    assert float(task.train.inputs.min()) >= -1.0 - 1e-5 and float(task.train.inputs.max()) <= 1.0 + 1e-5
    with pytest.raises(DataError, match="image_size"):  # images of different sizes need resizing
        as_task(str(tmp_path))


@pytest.mark.parametrize("x, y, phrase", [
    (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), "empty"),
    (torch.zeros(10, 3), torch.zeros(9, dtype=torch.long), "same length"),
    (torch.zeros(10, 3), torch.tensor([0.0, 1.0] * 5), "LabelEncoder"),
    (torch.zeros(10, 3), np.array(["a", "b"] * 5), "LabelEncoder"),
    (torch.zeros(10, 3), np.array([-1, 0] * 5), "negative"),
    (torch.zeros(10, 3), np.array([0, 2] * 5), "never occur"),
    (torch.zeros(3, 3), np.array([0, 1, 2]), "only 1 example"),
    (torch.zeros(4, 3), np.eye(2, dtype=np.int64)[[0, 1, 0, 1]], "argmax"),
    (torch.zeros(8, 3), np.array([0, 1, 2, 3] * 2), "fewer than the 4 classes"),
    (torch.zeros(4, 3), np.array([0, 0, 0, 0]), "at least 2 classes"),
])
def test_bad_data_raises_data_error_naming_the_fix(x, y, phrase):
    with pytest.raises(DataError, match=phrase):
        as_task(x, y)


def test_fewer_examples_than_classes():
    with pytest.raises(DataError, match="fewer examples than classes"):
        as_task(torch.zeros(3, 2), np.array([0, 1, 2]), num_classes=5)


@pytest.mark.parametrize("kw", [dict(val_fraction=0), dict(val_fraction=1.0), dict(val_fraction="0.2"),
                                dict(samples_per_class=0), dict(max_samples=2.5), dict(max_samples=1),
                                dict(image_size=0), dict(num_classes=1)])
def test_bad_options_raise_config_error(kw):
    with pytest.raises(ConfigError, match="parameter of as_task"):
        as_task(torch.zeros(20, 2), np.arange(20) % 2, **kw)


def test_validation_happens_before_loading():
    ds = CountingDataset()
    with pytest.raises(ConfigError):
        as_task(ds, val_fraction=2.0)
    with pytest.raises(DataError, match="num_classes"):
        as_task(ds, num_classes=3)
    assert ds.calls == 0


def test_texts_need_a_tokenizer_and_labels_must_fit_test():
    with pytest.raises(DataError, match="tokenizer"):
        as_task(["good", "bad"] * 4, [1, 0] * 4)
    with pytest.raises(DataError, match="test labels"):
        as_task(torch.zeros(20, 2), np.arange(20) % 2, test=(torch.zeros(2, 2), np.array([0, 5])))


def test_kinds_and_task_passthrough():
    y = np.arange(40) % 2
    assert as_task(torch.randn(40, 5), y).kind == "features"
    ids = as_task(torch.randint(0, 100, (40, 7)), y)
    assert ids.kind == "text" and ids.train.inputs.dtype == torch.long  # token ids stay integers
    task = as_task(torch.randn(40, 3, 4, 4), y)
    assert task.kind == "image" and as_task(task) is task
    low = as_task(task, samples_per_class=2)
    assert low.train.targets.bincount().tolist() == [2, 2] and low.val is task.val
