"""MultiTaskModel: every task equals its standalone SubTuned model; the prefix runs once; frozen blocks after a fork
run once on the concatenation; tasks come and go at run time; architectures it cannot run exactly are refused."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

import autosub
from autosub import Delta, MultiTaskModel, export
from autosub.data.task import Split, Task
from autosub.errors import BlockDiscoveryError, ConfigError, WeightsError
from autosub.model.text import TextClassifier
from conftest import make_image_task, perturbed_copy

CNN_TASKS = {"late": (3,), "mid": (1, 3), "same": (1,), "probe": (), "early": (0, 2)}


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def cnn(test_resnet):
    """test_resnet SubTuned five ways with fit: different and equal fork points, and a linear probe."""
    fits = {name: autosub.fit(test_resnet, make_image_task(n=48, classes=2 + i, seed=i), sel, epochs=1, lr=1e-2,
                              batch_size=16, seed=i) for i, (name, sel) in enumerate(CNN_TASKS.items())}
    deltas = {name: Delta.from_result(res, trunk=test_resnet) for name, res in fits.items()}
    return test_resnet, fits, deltas


@pytest.fixture(scope="module")
def bert():
    """A tiny BERT in TextClassifier, SubTuned four ways on token sequences with padding."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    trunk = TextClassifier(BertModel(BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                                intermediate_size=37, vocab_size=100)), 2).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 100, (40, 8), generator=g)
    mask = (torch.arange(8) < torch.randint(3, 9, (40, 1), generator=g)).long()
    y = (ids[:, 0] > 50).long()
    task = Task(Split({"input_ids": ids[:32], "attention_mask": mask[:32]}, y[:32], name="train"),
                Split({"input_ids": ids[32:], "attention_mask": mask[32:]}, y[32:], name="val"), 2, kind="text")
    sels = {"a": (2,), "b": (0, 3), "probe": (), "c": (2, 3)}
    fits = {n: autosub.fit(trunk, task, s, epochs=1, lr=1e-2, batch_size=8, seed=i) for i, (n, s) in enumerate(sels.items())}
    return trunk, fits, {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_each_task_equals_its_standalone_model_on_a_cnn(cnn, batch):
    trunk, fits, deltas = cnn
    mt = MultiTaskModel(trunk, deltas)
    x = torch.randn(batch, 3, 32, 32)
    with torch.no_grad():
        out = mt(x)
        assert list(out) == list(CNN_TASKS)
        for name, res in fits.items():
            assert close(out[name], res.model(x)), name
    assert mt.mode_ == "blocks"
    assert mt.fork_points() == {"late": 3, "mid": 1, "same": 1, "probe": 4, "early": 0}


def test_prefix_runs_once_and_frozen_blocks_run_once_on_the_concatenation(cnn):
    trunk, _, deltas = cnn
    mt = MultiTaskModel(trunk, deltas, example_inputs=torch.randn(2, 3, 32, 32))
    seen: dict[str, list[int]] = {}
    probes = {"stem": mt.trunk.conv1, "layer1": mt.trunk.layer1[0].conv1, "layer2": mt.trunk.layer2[0].conv1,
              "layer3": mt.trunk.layer3[0].conv1, "layer4": mt.trunk.layer4[0].conv1}
    for key, module in probes.items():
        module.register_forward_pre_hook(lambda _m, args, key=key: seen.setdefault(key, []).append(len(args[0])))
    with torch.no_grad():
        mt(torch.randn(3, 3, 32, 32))
    # trunk's own modules: the shared stream plus every forked task that keeps the block frozen, in ONE call
    assert seen == {"stem": [3], "layer1": [3], "layer2": [2 * 3], "layer3": [3 * 3], "layer4": [3 * 3]}
    assert mt.block_runs() == (2, 4, 4, 5)  # distinct streams per block: shared + forks (tuned copies included)


def test_each_task_equals_its_standalone_model_on_a_transformer(bert):
    trunk, fits, inputs = bert
    mt = MultiTaskModel(trunk, {n: Delta.from_result(r, trunk=trunk) for n, r in fits.items()})
    with torch.no_grad():
        for rows in (slice(0, 1), slice(0, 3), slice(5, 12)):
            x = {k: v[rows] for k, v in inputs.items()}
            out = mt(x)
            for name, res in fits.items():
                assert close(out[name], res.model(x)), (name, rows)
    assert mt.mode_ == "inputs"  # TextClassifier pools with its own mask: the input is widened per task


def test_a_mask_the_model_builds_only_for_padded_inputs_is_routed_too(bert):
    trunk, fits, inputs = bert
    unpadded = {"input_ids": inputs["input_ids"][:3], "attention_mask": torch.ones(3, 8, dtype=torch.long)}
    mt = MultiTaskModel(trunk, {n: Delta.from_result(r, trunk=trunk) for n, r in fits.items()},
                        example_inputs=unpadded)  # BERT/SDPA passes no mask at all when nothing is padded
    padded = {k: v[:6] for k, v in inputs.items()}
    assert not bool(padded["attention_mask"].all())
    with torch.no_grad():
        out = mt(padded)
        for name, res in fits.items():
            assert close(out[name], res.model(padded)), name


@pytest.mark.parametrize("arch", ["test_vit", "resnet18"])
def test_timm_vit_and_torchvision_resnet(arch):
    torch.manual_seed(0)
    if arch == "resnet18":
        trunk, x, sels = torchvision.models.resnet18(weights=None).eval(), torch.randn(3, 3, 32, 32), [(6,), (4, 7), ()]
    else:
        trunk, x, sels = timm.create_model(arch).eval(), torch.randn(3, 3, 160, 160), [(5,), (1, 3), ()]
    tuned = {f"t{i}": perturbed_copy(trunk, s, 3 + i, seed=i) for i, s in enumerate(sels)}
    mt = MultiTaskModel(trunk, {n: Delta.from_model(m, s, trunk=trunk) for (n, m), s in zip(tuned.items(), sels)})
    with torch.no_grad():
        out = mt(x)
        for name, model in tuned.items():
            assert close(out[name], model(x)), name
    assert mt.mode_ == "blocks"


def test_add_and_remove_tasks_at_run_time(cnn, tmp_path):
    trunk, fits, deltas = cnn
    mt = MultiTaskModel(trunk, {"late": deltas["late"], "probe": deltas["probe"]})
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = mt(x)
        export(fits["mid"], tmp_path / "mid", trunk=trunk)
        mt.add_task("mid", tmp_path / "mid")  # a delta directory
        mt.add_task("fit", fits["early"])  # a FitResult tuned from this trunk
        after = mt(x)
        assert list(after) == ["late", "probe", "mid", "fit"]
        assert close(after["late"], before["late"]) and close(after["probe"], before["probe"])
        assert close(after["mid"], fits["mid"].model(x)) and close(after["fit"], fits["early"].model(x))
        mt.remove_task("late")
        out = mt(x)
        assert list(out) == ["probe", "mid", "fit"] and close(out["mid"], after["mid"])
    with pytest.raises(ConfigError, match="No task named 'late'"):
        mt.remove_task("late")
    with pytest.raises(ConfigError, match="new non-empty string"):
        mt.add_task("mid", deltas["mid"])


def test_a_delta_of_another_trunk_is_refused_at_add_task(cnn):
    trunk, _, deltas = cnn
    torch.manual_seed(7)
    other = timm.create_model("test_resnet").eval()
    mt = MultiTaskModel(other, {"probe": Delta.from_model(perturbed_copy(other, (), 3, 0), (), trunk=other)})
    with pytest.raises(WeightsError, match="fingerprint"):
        mt.add_task("late", deltas["late"])
    assert mt.task_names == ("probe",)


class Chain(nn.Module):
    """stem → 3 blocks → head, with optional glue the router must survive or refuse."""

    def __init__(self, glue: str = "") -> None:
        super().__init__()
        self.glue = glue
        self.stem = nn.Linear(6, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.stem(x)
        first = None
        for b in self.blocks:
            h = torch.relu(b(h))
            first = h if first is None else first
            if self.glue == "batch_norm":  # mixes the examples of a batch: no fork can be exact
                h = h - h.mean(0, keepdim=True)
        if self.glue == "skip":  # the tail reads block 0's output (a cross-boundary skip)
            h = h + first
        out = self.head(h)
        return out * 2 if self.glue == "scaled_head" else out


def chain_mt(glue: str, **kw):
    torch.manual_seed(0)
    model = Chain(glue).eval()
    part = autosub.discover_blocks(model, blocks=["blocks.0", "blocks.1", "blocks.2"])
    sels = {"a": (1,), "b": (2,), "c": (0, 2)}
    tuned = {n: perturbed_copy(model, s, 3, seed=i, partition=part) for i, (n, s) in enumerate(sels.items())}
    deltas = {n: Delta.from_model(tuned[n], s, trunk=model, partition=part) for n, s in sels.items()}
    return model, part, tuned, deltas


def test_a_cross_boundary_skip_is_served_exactly_by_widening_the_input():
    model, part, tuned, deltas = chain_mt("skip")
    x = torch.randn(5, 6)
    mt = MultiTaskModel(model, deltas, partition=part, example_inputs=x)
    assert mt.mode_ == "inputs"
    with torch.no_grad():
        out = mt(x)
        for name, m in tuned.items():
            assert close(out[name], m(x)), name


@pytest.mark.parametrize("glue, match", [("batch_norm", "cannot run Chain exactly"), ("scaled_head", "head's output")])
def test_architectures_that_cannot_be_exact_are_refused(glue, match):
    model, part, _, deltas = chain_mt(glue)
    with pytest.raises(BlockDiscoveryError, match=match):
        MultiTaskModel(model, deltas, partition=part, example_inputs=torch.randn(4, 6))


def test_inference_only_and_clear_errors(cnn):
    trunk, _, deltas = cnn
    mt = MultiTaskModel(trunk, {"late": deltas["late"]})
    mt.train()
    assert not any(m.training for m in mt.modules())
    assert not any(p.requires_grad for p in mt.parameters())
    assert mt.trunk is not trunk and all(p.requires_grad for p in trunk.parameters())  # the caller's is untouched
    mt.remove_task("late")
    with pytest.raises(ConfigError, match="no task"):
        mt(torch.randn(2, 3, 32, 32))
    with pytest.raises(ConfigError, match="'mode'"):
        MultiTaskModel(trunk, mode="fast")


@pytest.mark.gpu
def test_on_a_gpu_each_task_equals_its_standalone_model(cnn):
    trunk, fits, deltas = cnn
    mt = MultiTaskModel(trunk, deltas).cuda()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        out = mt(x.cuda())
        for name, res in fits.items():
            torch.testing.assert_close(out[name].cpu(), res.model(x), rtol=1e-3, atol=1e-4)
