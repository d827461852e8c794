"""replace_head: fresh heads for timm / torchvision / Hugging Face / generic models; seeding; errors."""
from __future__ import annotations

import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn

from autosub.model.blocks import discover_blocks
from autosub.errors import BlockDiscoveryError, ConfigError
from autosub.model.heads import head_parameters, replace_head

transformers = pytest.importorskip("transformers")


def tiny_bert_config(**kw):
    return transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                   intermediate_size=64, vocab_size=100, max_position_embeddings=64, **kw)


def test_timm_reset_classifier_and_partition():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    out = replace_head(model, 3, seed=0)
    assert out is model and model.fc.out_features == 3 and model.fc.in_features == 512
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert discover_blocks(model).head == ("fc.weight", "fc.bias")


def test_seed_is_deterministic_and_leaves_global_rng_alone():
    model = timm.create_model("test_resnet", pretrained=False)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    w0 = replace_head(model, 4, seed=7).get_classifier().weight.clone()
    assert torch.equal(torch.rand(3), expected), "replace_head(seed=...) changed the global RNG"
    w1 = replace_head(model, 4, seed=7).get_classifier().weight.clone()
    w2 = replace_head(model, 4, seed=8).get_classifier().weight.clone()
    assert torch.equal(w0, w1) and not torch.equal(w0, w2)
    # the generic path is seeded the same way
    lin = [replace_head(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), 3, seed=1)[2].weight
           for _ in range(2)]
    assert torch.equal(lin[0], lin[1])


@pytest.mark.parametrize(
    "builder, path",
    [
        (tvm.resnet18, "fc"),
        (tvm.vit_b_16, "heads.head"),
        (tvm.convnext_tiny, "classifier.2"),
        (tvm.efficientnet_b0, "classifier.1"),
        (tvm.mobilenet_v3_small, "classifier.3"),
    ],
)
def test_torchvision_heads(builder, path):
    with torch.device("meta"):
        model = builder()
    old = model.get_submodule(path)
    replace_head(model, 7)
    new = model.get_submodule(path)
    assert isinstance(new, nn.Linear) and new is not old
    assert (new.in_features, new.out_features) == (old.in_features, 7)
    assert head_parameters(model) == [f"{path}.weight", f"{path}.bias"]
    part = discover_blocks(model)
    assert set(part.head) == {f"{path}.weight", f"{path}.bias"}


def test_head_keeps_dtype_and_forward_works():
    model = tvm.resnet18(num_classes=10).double()
    replace_head(model, 5, seed=0)
    assert model.fc.weight.dtype == torch.float64
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float64)).shape == (2, 5)


def test_hf_sequence_classifier_head_and_num_labels():
    model = transformers.BertForSequenceClassification(tiny_bert_config(num_labels=2))
    replace_head(model, 5, seed=0)
    assert model.classifier.out_features == 5 and model.config.num_labels == 5 and model.num_labels == 5
    logits = model(input_ids=torch.randint(0, 100, (2, 6))).logits
    assert logits.shape == (2, 5)


def test_bare_hf_encoder_is_wrapped_in_text_classifier():
    text = pytest.importorskip("autosub.model.text")
    bert = transformers.BertModel(tiny_bert_config())
    model = replace_head(bert, 4, seed=0)
    assert isinstance(model, text.TextClassifier) and model.encoder is bert
    assert model.head.out_features == 4
    part = discover_blocks(model)
    assert part.names == ("encoder.encoder.layer.0", "encoder.encoder.layer.1") and part.head_module == "head"
    assert head_parameters(model) == ["head.weight", "head.bias"]
    # a wrapped model goes through reset_classifier the second time
    assert replace_head(model, 2) is model and model.head.out_features == 2


def test_generic_last_linear():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    first = model[0]
    replace_head(model, 6)
    assert model[0] is first and model[2].out_features == 6 and model[2].in_features == 8
    assert model(torch.randn(3, 4)).shape == (3, 6)


def test_errors():
    with pytest.raises(BlockDiscoveryError, match="Cannot find a classification head in Sequential"):
        replace_head(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), 3)
    with pytest.raises(BlockDiscoveryError, match="'fc'.*Conv2d"):
        model = nn.Module()
        model.fc = nn.Conv2d(3, 4, 1)
        replace_head(model, 3)
    for bad in (0, -1, 2.5, "3"):
        with pytest.raises(ConfigError, match="num_classes"):
            replace_head(nn.Linear(4, 2), bad)
