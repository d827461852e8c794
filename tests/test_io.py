"""Files autosub writes: atomic, sorted JSON; reads that explain what is wrong with a file; checksummed tensors."""
from __future__ import annotations

import json
import os

import pytest
import torch

from autosub._io import atomic_write, load_tensors, read_json, save_tensors, tensor_checksum, write_json
from autosub.errors import WeightsError


def test_write_json_is_sorted_and_leaves_no_temp_file(tmp_path):
    path = write_json({"b": (1, 2), "a": torch.tensor(3.5)}, tmp_path / "x" / "f.json")
    text = path.read_text()
    assert text.index('"a"') < text.index('"b"') and json.loads(text) == {"a": 3.5, "b": [1, 2]}
    assert os.listdir(path.parent) == ["f.json"]


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = atomic_write(tmp_path / "f.txt", "old")

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, "new")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


@pytest.mark.parametrize("content, match", [
    ("", "not valid JSON"), ('{"kind": "x", "sel', "not valid JSON"), ("[1, 2]", "JSON list"),
    ('{"kind": "x"}', "lacks the field"), ('{"kind": "x", "selection": 1, "autosub_version": "99.0"}', "newer"),
])
def test_read_json_explains_bad_files(tmp_path, content, match):
    (tmp_path / "f.json").write_text(content)
    with pytest.raises(WeightsError, match=match):
        read_json(tmp_path / "f.json", what="thing", required=("kind", "selection"))


def test_read_json_of_a_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        read_json(tmp_path / "nope.json", what="thing")


def test_tensors_round_trip_and_any_damage_is_caught(tmp_path):
    tensors = {"w": torch.randn(4, 3), "b": torch.zeros(3), "n": torch.tensor(7)}
    sums = save_tensors(tmp_path / "t.safetensors", tensors)
    assert sums == {k: tensor_checksum(v) for k, v in tensors.items()}
    back = load_tensors(tmp_path / "t.safetensors", checksums=sums, what="test")
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
    raw = bytearray((tmp_path / "t.safetensors").read_bytes())
    raw[-5] ^= 0xFF  # flip a byte inside the last tensor's data
    (tmp_path / "flipped.safetensors").write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="checksum"):
        load_tensors(tmp_path / "flipped.safetensors", checksums=sums, what="test")
    (tmp_path / "short.safetensors").write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(WeightsError, match="truncated or corrupt"):
        load_tensors(tmp_path / "short.safetensors", checksums=sums, what="test")
    with pytest.raises(WeightsError, match="do not belong together"):
        load_tensors(tmp_path / "t.safetensors", checksums={"w": sums["w"]}, what="test")
