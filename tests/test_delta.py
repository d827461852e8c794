"""Deltas: export → load → the same outputs; every kind of wrong or damaged artifact is refused with a clear error."""
from __future__ import annotations

import copy
import json

import pytest
import timm
import torch

import autosub
from autosub import Delta, SearchResult, WeightsError, export, load_delta
from autosub.deploy.delta import DELTA_JSON, DELTA_TENSORS
from autosub.errors import ConfigError, SelectionError
from autosub.hpo.result import trunk_fingerprint
from autosub.model.subtune import tuned_tensors


@pytest.fixture(scope="module")
def fitted(test_resnet, image_task):
    """test_resnet SubTuned on blocks 2 and 3 (BatchNorm statistics move, so buffers must travel too)."""
    return autosub.fit(test_resnet, image_task, (2, 3), epochs=1, lr=1e-2, batch_size=16)


@pytest.fixture()
def saved(tmp_path, fitted, test_resnet, image_task):
    task = copy.copy(image_task)  # the session fixture stays untouched
    task.meta = {"classes": ["a", "b", "c", "d"], "image_size": 32, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    delta = export(fitted, tmp_path / "delta", trunk=test_resnet, task=task)
    return delta, tmp_path / "delta"


def test_export_load_apply_gives_identical_outputs(saved, fitted, test_resnet):
    _, path = saved
    loaded = load_delta(path)
    model = loaded.apply(test_resnet)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), fitted.model.eval()(x))
    assert loaded.selection == (2, 3) and loaded.fork == 2 and loaded.tuned_blocks == ("layer3", "layer4")
    stats = "layer3.0.bn1.running_mean"
    assert stats in loaded.tensors
    assert not torch.equal(loaded.tensors[stats], test_resnet.state_dict()[stats])  # the tuned statistics
    assert not any(k.startswith(("layer1.", "layer2.", "conv1.", "bn1.")) for k in loaded.tensors)


def test_record_is_sorted_json_with_classes_preprocessing_version_and_checksums(saved, test_resnet):
    delta, path = saved
    text = (path / DELTA_JSON).read_text()
    record = json.loads(text)
    assert text == json.dumps(record, sort_keys=True, indent=2) + "\n"
    assert record["kind"] == "delta" and record["autosub_version"] == autosub.__version__
    assert record["classes"] == ["a", "b", "c", "d"] and record["num_classes"] == 4
    assert record["preprocessing"] == {"kind": "image", "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert record["trunk_fingerprint"] == trunk_fingerprint(test_resnet, autosub.discover_blocks(test_resnet))
    assert record["block_names"] == ["layer1", "layer2", "layer3", "layer4"] and record["head_module"] == "fc"
    assert set(record["tensors"]) == set(delta.tensors)
    assert all(len(entry["sha256"]) == 64 for entry in record["tensors"].values())


def test_delta_size_is_about_its_tensors_bytes(saved, test_resnet):
    delta, path = saved
    size = (path / DELTA_TENSORS).stat().st_size
    assert delta.nbytes <= size <= delta.nbytes + 16 * 1024
    trunk_bytes = sum(t.numel() * t.element_size() for t in test_resnet.state_dict().values())
    assert size < 0.75 * trunk_bytes  # nothing of the frozen layer1/layer2/stem is stored


def test_wrong_trunk_is_refused_by_fingerprint(saved):
    delta, _ = saved
    torch.manual_seed(1)
    other = timm.create_model("test_resnet", pretrained=False).eval()
    with pytest.raises(WeightsError, match="fingerprint"):
        delta.apply(other)


def test_wrong_architecture_is_refused(saved):
    delta, _ = saved
    with pytest.raises(WeightsError, match="blocks"):
        delta.apply(timm.create_model("test_vit", pretrained=False))


def test_truncated_file_is_refused(saved):
    _, path = saved
    data = (path / DELTA_TENSORS).read_bytes()
    (path / DELTA_TENSORS).write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="truncated"):
        load_delta(path)


def test_flipped_bytes_are_refused_by_checksum(saved):
    _, path = saved
    data = bytearray((path / DELTA_TENSORS).read_bytes())
    data[-7] ^= 0xFF  # inside the last tensor's values; size and header unchanged
    (path / DELTA_TENSORS).write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_delta(path)


def test_tensor_file_from_another_export_is_refused(saved, tmp_path, test_resnet, image_task):
    _, path = saved
    other = autosub.fit(test_resnet, image_task, (3,), epochs=1, batch_size=32)
    export(other, tmp_path / "other", trunk=test_resnet)
    (path / DELTA_TENSORS).write_bytes((tmp_path / "other" / DELTA_TENSORS).read_bytes())
    with pytest.raises(WeightsError, match="(different exports|recorded)"):
        load_delta(path)


def test_newer_autosub_version_is_refused(saved):
    _, path = saved
    record = json.loads((path / DELTA_JSON).read_text())
    record["autosub_version"] = "99.0.0"
    (path / DELTA_JSON).write_text(json.dumps(record))
    with pytest.raises(WeightsError, match="newer"):
        load_delta(path)


def test_wrong_keys_and_shapes_are_refused(saved, test_resnet):
    delta, _ = saved
    common = dict(selection=delta.selection, block_names=delta.block_names, head_module="fc", num_classes=4,
                  trunk_fingerprint=delta.trunk_fingerprint)
    stray = Delta(tensors={**delta.tensors, "layer1.0.conv1.weight": test_resnet.layer1[0].conv1.weight}, **common)
    with pytest.raises(WeightsError, match="no tuned block"):
        stray.apply(test_resnet)
    wrong = dict(delta.tensors, **{"fc.weight": torch.zeros(4, 7)})
    with pytest.raises(WeightsError, match="shape"):
        Delta(tensors=wrong, **common).apply(test_resnet)
    headless = {k: v for k, v in delta.tensors.items() if not k.startswith("fc.")}
    with pytest.raises(WeightsError, match="head"):
        Delta(tensors=headless, **common).apply(test_resnet)


def test_a_search_result_saved_or_live_exports_without_the_trunk(tmp_path, fitted, test_resnet):
    part = autosub.discover_blocks(test_resnet)
    result = SearchResult(selection=(2, 3), hparams={"lr": 1e-2}, score=fitted.score, test_score=None, model=None,
                          trials=None, records=[], pareto=[], spent={}, state=tuned_tensors(fitted.model, (2, 3), part),
                          config={"num_classes": 4, "block_names": list(part.names),
                                  "trunk_fingerprint": trunk_fingerprint(test_resnet, part)})
    result.save(tmp_path / "run")
    delta = export(SearchResult.load(tmp_path / "run"), tmp_path / "delta")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_delta(tmp_path / "delta").apply(test_resnet)(x), fitted.model(x))
    assert delta.head_module is None and delta.info["source"] == "search"  # read from the trunk when applied


def test_refusals_before_any_work(tmp_path, fitted, test_resnet, image_task):
    with pytest.raises(ConfigError, match="trunk="):
        export(fitted, tmp_path / "x")
    with pytest.raises(WeightsError, match="block 2"):  # block 2 was tuned too: a delta must not drop it
        export(fitted.model, tmp_path / "x", trunk=test_resnet, selection=(3,))
    full = autosub.fit(test_resnet, image_task, "all", epochs=1, batch_size=48)
    with pytest.raises(SelectionError, match="Full finetuning"):
        export(full, tmp_path / "x", trunk=test_resnet)
    with pytest.raises(ConfigError, match="SearchResult, a FitResult"):
        export({"not": "a result"}, tmp_path / "x")
    with pytest.raises(WeightsError, match="autosub.json"):
        load_delta(tmp_path / "nowhere")
    assert not (tmp_path / "x").exists()


def test_a_failed_save_leaves_the_previous_delta_intact(saved, monkeypatch):
    delta, path = saved
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    import os

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)  # the write fails at its last step, after the temp file is full
    with pytest.raises(OSError, match="disk full"):
        delta.save_pretrained(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before  # no temp files, nothing half-written
    assert load_delta(path).selection == delta.selection
