"""Fused multi-trial training: K trials in one forward/backward per step give what K runs of ``fit`` give.

The central check: per-epoch losses, validation curves and final tuned tensors of a fused group equal (allclose)
those of the same trials run one by one with ``fit`` — on a CNN (BatchNorm in train mode inside tuned blocks) and on
a transformer (dropout inside tuned layers: each trial draws from its own RNG stream). Then: trials leave (pruned,
diverged) and join (between epochs) without changing the others; memory accounting refuses a group that does not fit;
a model that cannot be fused is refused (or trained one by one) before any training.
"""
from __future__ import annotations

import time

import pytest
import torch

from autosub.data.task import Split, Task
from autosub.errors import ConfigError, SelectionError, TrainingDiverged
from autosub.model.blocks import discover_blocks
from autosub.model.subtune import tuned_tensors
from autosub.training.fused import (COMPLETE, FAILED, PRUNED, FusedGroup, FusionError, GroupMemoryError, TrialSpec,
                                    fit_many)
from autosub.training.trainer import fit
from conftest import Folding

SPECS = [TrialSpec((1,), lr=3e-3, epochs=2, seed=0),
         TrialSpec((2, 3), lr=1e-3, weight_decay=0.01, epochs=2, seed=1),
         TrialSpec("probe", lr=1e-2, epochs=2, seed=2)]


def sequential(model, task, specs, **kw):
    return [fit(model, task, s.selection, epochs=s.epochs, lr=s.lr, weight_decay=s.weight_decay, seed=s.seed,
                lr_multipliers=s.lr_multipliers, **kw) for s in specs]


def assert_same_run(got, want, partition):
    """Same per-epoch losses, validation curve and final tuned tensors (BatchNorm statistics included)."""
    assert got.selection == want.selection
    assert got.train_loss == pytest.approx(want.train_loss, rel=1e-5, abs=1e-6)
    assert got.curve == pytest.approx(want.curve, abs=1e-9)
    assert got.trainable_params == want.trainable_params and got.cached == want.cached
    a = tuned_tensors(got.model, got.selection, partition)
    b = tuned_tensors(want.model, want.selection, partition)
    assert set(a) == set(b) and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("cache", ["auto", False])
def test_fused_trials_equal_sequential_fits_on_a_cnn(test_resnet, image_task, cache):
    outcomes = fit_many(test_resnet, image_task, SPECS, batch_size=16, cache=cache)
    want = sequential(test_resnet, image_task, SPECS, batch_size=16, cache=cache)
    part = discover_blocks(want[0].model)
    assert [o.status for o in outcomes] == [COMPLETE] * 3 and [o.key for o in outcomes] == [0, 1, 2]
    assert all(o.seconds > 0 for o in outcomes)
    for o, w in zip(outcomes, want):
        assert_same_run(o.result, w, part)
    assert outcomes[0].result.model is not outcomes[1].result.model


def tiny_text_task_and_model():
    """A 3-layer BERT (dropout 0.1 in every layer) in a TextClassifier, on padded random token sequences."""
    transformers = pytest.importorskip("transformers")
    from autosub.model.text import TextClassifier

    cfg = transformers.BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    model = TextClassifier(transformers.BertModel(cfg, add_pooling_layer=False), num_classes=2).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 60, (80, 12), generator=g)
    mask = (torch.arange(12)[None] < torch.randint(4, 13, (80, 1), generator=g)).long()
    ids = ids * mask
    y = ids[:, 0] % 2
    split = lambda s, name: Split({"input_ids": ids[s], "attention_mask": mask[s]}, y[s], name=name)  # noqa: E731
    return model, Task(split(slice(0, 60), "train"), split(slice(60, 80), "val"), 2, kind="text")


@pytest.mark.parametrize("cache", ["auto", False])
def test_fused_trials_equal_sequential_fits_on_a_transformer(cache):
    model, task = tiny_text_task_and_model()
    specs = [TrialSpec((0,), lr=3e-3, epochs=2, seed=0),
             TrialSpec((1, 2), lr=1e-3, weight_decay=0.01, lr_multipliers={2: 0.5}, epochs=2, seed=1),
             TrialSpec((2,), lr=1e-2, epochs=2, seed=2)]
    outcomes = fit_many(model, task, specs, batch_size=16, cache=cache)
    want = sequential(model, task, specs, batch_size=16, cache=cache)
    part = discover_blocks(want[0].model)
    for o, w in zip(outcomes, want):
        assert o.status == COMPLETE
        assert_same_run(o.result, w, part)


def test_frozen_blocks_run_once_per_step_on_the_concatenated_slices(test_resnet, image_task):
    """The point of fusing: a frozen block after two trials' tuned blocks runs once per step, on both slices."""
    group = FusedGroup(test_resnet, image_task, batch_size=16)
    group.add([TrialSpec((0,), epochs=1, seed=0), TrialSpec((1,), epochs=1, seed=1)])
    rows = []
    handle = group.trunk.get_submodule("layer3").register_forward_hook(lambda m, a, out: rows.append(len(a[0])))
    try:
        group.run_epoch()
    finally:
        handle.remove()
    n = len(image_task.train)
    steps = -(-n // 16)
    train_rows = rows[:steps]
    assert len(train_rows) == steps and sum(train_rows) == 2 * n  # one call per step, both trials' rows in it
    assert train_rows[0] == 32


def test_a_pruned_trial_leaves_without_changing_the_others(test_resnet, image_task):
    import optuna

    def prune(epoch, score):
        raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    specs = [SPECS[0], TrialSpec((2,), lr=2e-3, epochs=3, seed=4, callback=prune), SPECS[2]]
    outcomes = fit_many(test_resnet, image_task, specs, batch_size=16)
    assert [o.status for o in outcomes] == [COMPLETE, PRUNED, COMPLETE]
    pruned = outcomes[1]
    assert isinstance(pruned.error, optuna.TrialPruned) and pruned.epochs_done == 1 and pruned.result.model is None
    want = sequential(test_resnet, image_task, [SPECS[0], SPECS[2]], batch_size=16)
    part = discover_blocks(want[0].model)
    for o, w in zip([outcomes[0], outcomes[2]], want):
        assert_same_run(o.result, w, part)


def test_a_diverging_trial_fails_and_the_group_goes_on(test_resnet, image_task):
    specs = [SPECS[0], TrialSpec((3,), lr=1e12, epochs=2, seed=0)]
    outcomes = fit_many(test_resnet, image_task, specs, batch_size=16, cache=False)
    assert [o.status for o in outcomes] == [COMPLETE, FAILED]
    assert isinstance(outcomes[1].error, TrainingDiverged) and "lr=1e+12" in str(outcomes[1].error)
    (want,) = sequential(test_resnet, image_task, [SPECS[0]], batch_size=16, cache=False)
    assert_same_run(outcomes[0].result, want, discover_blocks(want.model))


def test_a_trial_joins_between_epochs_and_engines_step_the_group(test_resnet, image_task):
    seen = []
    first = TrialSpec((1,), lr=3e-3, epochs=2, seed=0, key="a", callback=lambda e, s: seen.append(("a", e)))
    late = TrialSpec((3,), lr=1e-3, epochs=2, seed=5, key="b", callback=lambda e, s: seen.append(("b", e)))
    group = FusedGroup(test_resnet, image_task, batch_size=16)
    t0 = time.perf_counter()
    assert group.add(first) == ["a"]
    group.run_epoch()
    assert group.pop_finished() == [] and group.active == ["a"]
    group.add(late)  # joins between epochs, at its own epoch 0
    group.run_epoch()
    done = group.pop_finished()
    assert [o.key for o in done] == ["a"] and group.active == ["b"]
    group.run_epoch()
    done += group.pop_finished()
    assert seen == [("a", 0), ("a", 1), ("b", 0), ("b", 1)] and not group.active
    # each trial is charged its share of the group's time: the shares add up to (at most) the time spent
    assert 0 < sum(o.seconds for o in done) <= time.perf_counter() - t0
    want = sequential(test_resnet, image_task, [first, late], batch_size=16)
    part = discover_blocks(want[0].model)
    for o, w in zip(done, want):
        assert_same_run(o.result, w, part)


def test_an_engine_can_remove_a_trial_between_epochs(test_resnet, image_task):
    group = FusedGroup(test_resnet, image_task, batch_size=16, keep_models=False)
    group.add([TrialSpec((1,), epochs=3, key=1), TrialSpec((2,), epochs=3, key=2)])
    group.run_epoch()
    out = group.remove(2)
    assert out.status == PRUNED and out.epochs_done == 1 and group.active == [1]
    with pytest.raises(ConfigError, match="No active trial with key 2"):
        group.remove(2)


def test_memory_accounting_refuses_a_group_that_does_not_fit(test_resnet, image_task):
    probe = FusedGroup(test_resnet, image_task, batch_size=16)
    est = probe.estimate(TrialSpec((2,), epochs=1))
    one = est.total
    assert est.exact and est.activation_bytes_per_row > 0 and est.state_bytes > 0 and probe.active == []
    probe.add(TrialSpec((2,), epochs=1))
    assert probe.memory_used >= one  # a cheap upper bound stands in while it fits
    group = FusedGroup(test_resnet, image_task, batch_size=16, memory=int(one * 1.5))
    specs = [TrialSpec((2,), epochs=1, seed=s) for s in range(3)]
    with pytest.raises(GroupMemoryError, match=r"3 more trial\(s\) would need about .* MiB.*only 1 fit"):
        group.add(specs)
    assert group.active == []  # nothing was added
    assert group.add(specs, partial=True) == [0]  # the prefix that fits
    with pytest.raises(GroupMemoryError):
        fit_many(test_resnet, image_task, specs, batch_size=16, memory=int(one * 1.5))
    outcomes = fit_many(test_resnet, image_task, specs, batch_size=16, memory=int(one * 1.5), split=True)
    assert [o.status for o in outcomes] == [COMPLETE] * 3


def test_a_group_checkpoint_resumes_with_fit(test_resnet, image_task):
    """A trial checkpointed inside a group continues with fit(resume=…) as if never stopped (Ray's use)."""
    states = []
    spec = TrialSpec((2,), lr=3e-3, epochs=3, seed=3, checkpoint=states.append)
    fit_many(test_resnet, image_task, [spec, SPECS[2]], batch_size=16)
    resumed = fit(test_resnet, image_task, (2,), epochs=3, lr=3e-3, seed=3, batch_size=16, resume=states[0])
    (whole,) = sequential(test_resnet, image_task, [spec], batch_size=16)
    assert resumed.resumed_from == 1
    assert_same_run(resumed, whole, discover_blocks(whole.model))


@pytest.mark.parametrize("spec, error, match", [
    (TrialSpec("all"), FusionError, "full finetuning"),
    (TrialSpec((9,)), SelectionError, "out of range"),
    (TrialSpec((1,), lr=0.0), ConfigError, "'lr'"),
    (TrialSpec((1,), epochs=0), ConfigError, "'epochs'"),
])
def test_bad_trials_are_refused_before_any_work(test_resnet, image_task, spec, error, match):
    group = FusedGroup(test_resnet, image_task, batch_size=16)
    with pytest.raises(error, match=match):
        group.add([TrialSpec((1,)), spec])
    assert group.active == []


def test_duplicate_keys_and_bad_memory_are_refused(test_resnet, image_task):
    with pytest.raises(ConfigError, match="same key"):
        fit_many(test_resnet, image_task, [TrialSpec((1,), key="x"), TrialSpec((2,), key="x")])
    with pytest.raises(ConfigError, match="'memory'"):
        FusedGroup(test_resnet, image_task, memory=-1)


def test_a_model_that_cannot_be_fused_is_refused_or_trained_one_by_one():
    torch.manual_seed(0)
    model = Folding()
    x, y = torch.randn(40, 8), torch.arange(40) % 3
    task = Task(Split(x[:30], y[:30], name="train"), Split(x[30:], y[30:], name="val"), 3, kind="features")
    specs = [TrialSpec((0,), epochs=1, seed=0), TrialSpec((1,), epochs=1, seed=1)]
    with pytest.raises(FusionError, match="cannot .*fused"):
        fit_many(model, task, specs, blocks=["blocks.0", "blocks.1"], batch_size=8)
    with pytest.warns(RuntimeWarning, match="one by one"):
        outcomes = fit_many(model, task, specs, blocks=["blocks.0", "blocks.1"], batch_size=8, fallback=True)
    want = sequential(model, task, specs, blocks=["blocks.0", "blocks.1"], batch_size=8)
    assert [o.status for o in outcomes] == [COMPLETE] * 2
    assert [o.result.train_loss for o in outcomes] == [w.train_loss for w in want]


def test_a_fused_profile_scores_every_block_as_separate_runs_do(oracle):
    """profile(fuse=…) runs a rung's blocks × seeds as one group: the same scores as one fit per run."""
    from autosub.selection.profiling import profile

    model, task = oracle
    kw = dict(epochs=2, seeds=2, lr=1e-2, fidelity="halving", eta=2, pairs=2, progress=False)
    fused = profile(model, task, fuse=True, **kw)
    plain = profile(model, task, fuse=False, **kw)
    assert fused.config["fused"] and not plain.config["fused"]
    auto = profile(model, task, fuse="auto", **kw)  # fuses on CUDA only (on a CPU it measured no gain)
    assert auto.config["fused"] == torch.cuda.is_available() and auto.ranking() == plain.ranking()
    for a, b in zip([*fused.entries, *fused.pairs, *fused.baselines.values()],
                    [*plain.entries, *plain.pairs, *plain.baselines.values()]):
        assert a.selection == b.selection and a.epochs == b.epochs
        assert a.scores == pytest.approx(b.scores, abs=1e-9), a.name
        assert a.history.keys() == b.history.keys()
    assert fused.ranking() == plain.ranking() and fused.n_fits == plain.n_fits


def test_out_of_memory_fails_every_active_trial_with_advice(test_resnet, image_task):
    from autosub.errors import TrialOutOfMemory

    group = FusedGroup(test_resnet, image_task, batch_size=16)
    group.add([TrialSpec((1,), epochs=2), TrialSpec((2,), epochs=2)])

    def oom(module, args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    handle = group.trunk.get_submodule("layer3").register_forward_pre_hook(oom)
    try:
        group.run_epoch()
    finally:
        handle.remove()
    done = group.pop_finished()
    assert [o.status for o in done] == [FAILED, FAILED] and not group.active
    assert all(isinstance(o.error, TrialOutOfMemory) and "fewer trials per group" in str(o.error) for o in done)


@pytest.mark.parametrize("cache_views", [None, 2])
def test_random_augmentation_draws_from_each_trials_own_stream(test_resnet, image_task, cache_views):
    """A random train transform draws from the global RNG: live (uncached) it runs under each trial's own stream,
    with cached views each trial draws its views from its own data generator — both as in a run of its own."""
    task = Task(image_task.train, image_task.val, image_task.num_classes,
                train_transform=lambda x: x + 0.5 * torch.randn_like(x))
    specs = [TrialSpec((1,), lr=3e-3, epochs=2, seed=0), TrialSpec((3,), lr=1e-3, epochs=2, seed=1)]
    cache = "auto"
    if cache_views:  # the views are drawn once, at fill time: both paths must read the same ones
        from autosub.training.setup import build_cache, prepare

        setup = prepare(test_resnet, task)
        cache = build_cache(setup.work, setup.partition, {"train": task.train, "val": task.val}, [1, 3],
                            device=setup.device, batch_size=16, views=cache_views, transform=task.train_transform,
                            augmented=True)
    outcomes = fit_many(test_resnet, task, specs, batch_size=16, cache=cache, cache_views=cache_views)
    want = sequential(test_resnet, task, specs, batch_size=16, cache=cache, cache_views=cache_views)
    part = discover_blocks(want[0].model)
    assert all(w.cached == (cache_views is not None) for w in want)
    for o, w in zip(outcomes, want):
        assert_same_run(o.result, w, part)
