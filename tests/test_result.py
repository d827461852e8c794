"""SearchResult: save/load artifacts (sorted JSON + tuned tensors only), to_model, the Pareto front, the trials table."""
from __future__ import annotations

import json

import pytest
import torch

from autosub.model.blocks import discover_blocks
from autosub.errors import ConfigError, WeightsError
from autosub.hpo.result import SearchResult, TrialRecord, pareto_front, trials_frame
from autosub.hpo.searching import search
from autosub.hpo.space import SearchSpace


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import timm

    from autosub.data.datasets import digits

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False).eval()
    task = digits(model=model, image_size=16, samples_per_class=5)
    res = search(model, task, 2, run_dir=tmp_path_factory.mktemp("run"), epochs=1, prior=None, progress=False,
                 retrain=True, space=SearchSpace(min_blocks=2, max_blocks=2))
    yield model, task, res
    torch.set_num_threads(old)


def test_save_writes_sorted_json_and_only_the_tuned_tensors(setup, tmp_path):
    from safetensors import safe_open

    model, _, res = setup
    out = res.save(tmp_path / "artifact")
    text = (out / "autosub.json").read_text()
    meta = json.loads(text)
    assert text == json.dumps(meta, sort_keys=True, indent=2) + "\n"
    assert meta["autosub_version"] and meta["config"]["trunk_fingerprint"] and meta["config"]["retrained"]
    part = discover_blocks(model)
    allowed = set(part.head) | {n for i in res.selection for n in part[i].param_names}
    prefixes = tuple(m + "." for i in res.selection for m in part[i].modules) + (part.head_module + ".",)
    with safe_open(str(out / "tuned.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.metadata()["selection"] == ",".join(map(str, res.selection))
    assert keys and all(k in allowed or k.startswith(prefixes) for k in keys)
    assert any("running_mean" in k for k in keys)  # BatchNorm statistics of the tuned blocks travel too
    unselected = [i for i in range(len(part)) if i not in res.selection]
    assert not any(n in keys for i in unselected for n in part[i].param_names)


def test_load_and_to_model_rebuild_the_same_predictions(setup, tmp_path):
    model, task, res = setup
    res.save(tmp_path / "a")
    back = SearchResult.load(tmp_path / "a")
    assert back.selection == res.selection and back.score == res.score and back.test_score == res.test_score
    assert len(back.trials) == len(res.trials) and back.model is None
    rebuilt = back.to_model(model)
    x = task.val.inputs[:8]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), res.model.eval()(x))
    with pytest.raises(ConfigError, match="base model"):
        back.to_model()


def test_to_model_refuses_another_trunk_and_load_needs_an_artifact(setup, tmp_path):
    import timm

    _, _, res = setup
    torch.manual_seed(1)
    other = timm.create_model("test_resnet", pretrained=False).eval()
    with pytest.raises(WeightsError, match="fingerprint"):
        res.to_model(other)
    with pytest.raises(WeightsError, match="autosub.json does not exist"):
        SearchResult.load(tmp_path)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        SearchResult.load(tmp_path / "afile")
    with pytest.raises(ConfigError, match="is a file"):
        res.save(tmp_path / "afile")


def _damage(path, how):
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flip":
        raw = bytearray(data)
        raw[-3] ^= 0xFF
        path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name, how, match", [
    ("autosub.json", "truncate", "not valid JSON"), ("autosub.json", "empty", "not valid JSON"),
    ("tuned.safetensors", "truncate", "truncated or corrupt"), ("tuned.safetensors", "flip", "checksum"),
    ("tuned.safetensors", "delete", "is missing"), ("trials.csv", "corrupt", "not a readable CSV"),
])
def test_damaged_artifacts_fail_with_a_clear_error(setup, tmp_path, name, how, match):
    _, _, res = setup
    out = res.save(tmp_path / "a")
    target = out / name
    if how == "delete":
        target.unlink()
    elif how == "corrupt":
        target.write_bytes(b'number,state\n1,"unterminated\n2,3,4,5\n')
    else:
        _damage(target, how)
    with pytest.raises(WeightsError, match=match):
        SearchResult.load(out)


def test_a_result_from_a_newer_autosub_or_missing_fields_is_refused(setup, tmp_path):
    _, _, res = setup
    out = res.save(tmp_path / "a")
    meta = json.loads((out / "autosub.json").read_text())
    (out / "autosub.json").write_text(json.dumps({**meta, "autosub_version": "99.0"}))
    with pytest.raises(WeightsError, match="newer than this autosub"):
        SearchResult.load(out)
    del meta["selection"]
    (out / "autosub.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsError, match="lacks the field"):
        SearchResult.load(out)


def test_the_trials_table_and_dashboard_command(setup):
    _, _, res = setup
    cols = {"number", "state", "score", "selection", "lr", "trainable_params", "added_cost", "compute",
            "proposed_by", "fail_reason"}
    assert cols <= set(res.trials.columns) and res.dashboard_command.startswith("optuna-dashboard /")
    assert res.dashboard_command.endswith("/study.journal") and res.storage.endswith("study.journal")
    assert "SearchResult(selection=" in repr(res)


def _rec(n, values, cost=None, state="COMPLETE"):
    return TrialRecord(n, state, values, {}, (n,), user_attrs={"added_cost": cost})


def test_pareto_front_keeps_exactly_the_non_dominated_trials():
    recs = [_rec(0, [0.9, 0.8]), _rec(1, [0.8, 0.3]), _rec(2, [0.7, 0.5]), _rec(3, [0.95, 0.9]),
            _rec(4, [0.8, 0.3]), _rec(5, None, state="PRUNED")]
    front = pareto_front(recs, ("score", "cost"))
    assert [r.number for r in front] == [3, 0, 1]  # 2 is dominated by 1; 4 repeats 1's point
    single = pareto_front([_rec(0, [0.9], 0.8), _rec(1, [0.8], 0.3), _rec(2, [0.7], 0.5)], ("score",))
    assert [r.number for r in single] == [0, 1]  # single objective: the (score, added cost) trade-off
    frame = trials_frame(recs, ("score", "cost"))
    assert list(frame.number) == list(range(6)) and frame.cost.iloc[0] == 0.8
