"""Block discovery: golden counts on real architectures, completeness, entry modules, overrides, errors."""
from __future__ import annotations

import re

import pytest
import timm
import torch
import torchvision.models as tvm
from torch import nn

from autosub.model.blocks import Partition, discover_blocks, find_head
from autosub.errors import BlockDiscoveryError, ConfigError

transformers = pytest.importorskip("transformers")


def meta(builder, *args, **kwargs) -> nn.Module:
    """Build a real architecture without allocating or initialising weights."""
    with torch.device("meta"):
        return builder(*args, **kwargs)


def check_complete(model: nn.Module, part: Partition) -> None:
    """Every parameter is in exactly one of stem / block i / head; blocks are well-formed."""
    names = [n for n, _ in model.named_parameters()]
    listed = [*part.stem, *part.head, *(n for b in part for n in b.param_names)]
    assert len(listed) == len(set(listed)), "a parameter is listed twice"
    assert set(listed) == set(names)
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    for i, b in enumerate(part):
        assert b.index == i and b.param_names and b.modules
        assert b.num_params == sum(params[n].numel() for n in b.param_names)
        assert all(m in modules for m in b.modules)
        # the modules cover exactly the block's parameters
        covered = {n for n in names if any(n.startswith(m + ".") for m in b.modules)}
        assert covered == set(b.param_names)
    assert len(set(part.names)) == len(part), "block names must be unique"
    if part.head:
        assert part.head_module in modules


def tiny_bert_config():
    return transformers.BertConfig(num_hidden_layers=6, hidden_size=32, num_attention_heads=2,
                                   intermediate_size=64, vocab_size=100, max_position_embeddings=64)


class FakeTextClassifier(nn.Module):
    """The shape of autosub.model.text.TextClassifier: ``.encoder`` (HF model) + ``.head`` (Linear)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = transformers.BertModel(tiny_bert_config())
        self.head = nn.Linear(32, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids=ids).last_hidden_state.mean(1))


class Tower(nn.Module):
    """A generic model: input projection, a ModuleList of identical blocks, a norm and an output Linear."""

    def __init__(self, depth: int = 5) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 8)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.GELU()) for _ in range(depth))
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for layer in self.layers:
            x = layer(x)
        return self.out(self.norm(x))


# ------------------------------------------------------------------------------------------- golden


@pytest.mark.parametrize(
    "arch, blocks, stages, first, last, head",
    [
        ("resnet50", 16, 4, ("layer1.0",), ("layer4.2",), "fc"),
        ("vit_base_patch16_224", 12, 12, ("blocks.0",), ("blocks.11", "norm"), "head"),
        ("tf_efficientnet_lite0", 16, 7, ("blocks.0",), ("blocks.6", "conv_head", "bn2"), "classifier"),
    ],
)
def test_timm_golden(arch, blocks, stages, first, last, head):
    model = meta(timm.create_model, arch, pretrained=False)
    part = discover_blocks(model)
    check_complete(model, part)
    assert (len(part), part.source, part.head_module) == (blocks, "timm", head)
    assert part[0].modules == first and part[-1].modules == last
    assert part.head == (f"{head}.weight", f"{head}.bias")
    stage = discover_blocks(model, granularity="stage")
    check_complete(model, stage)
    assert len(stage) == stages
    # blocks are nested in stages: the coarse partition is a merge of the fine one
    fine_owner, coarse_owner = part.owner(), stage.owner()
    pairs = {(fine_owner[n], coarse_owner[n]) for n in fine_owner if isinstance(fine_owner[n], int)}
    assert len({f for f, _ in pairs}) == len(pairs)


def test_resnet50_stem_and_names():
    part = discover_blocks(meta(timm.create_model, "resnet50"))
    assert part.stem == ("conv1.weight", "bn1.weight", "bn1.bias")
    assert part.names[:4] == ("layer1.0", "layer1.1", "layer1.2", "layer2.0")


@pytest.mark.parametrize(
    "builder, blocks, stages, head",
    [
        (tvm.resnet18, 8, 4, "fc"),
        (tvm.vit_b_16, 12, 12, "heads"),
        (tvm.convnext_tiny, 18, 4, "classifier.2"),
        (tvm.efficientnet_b0, 16, 7, "classifier"),
        (tvm.mobilenet_v2, 17, 7, "classifier"),
        (tvm.mobilenet_v3_small, 11, 5, "classifier.3"),
    ],
)
def test_torchvision_families(builder, blocks, stages, head):
    model = meta(builder)
    part = discover_blocks(model)
    check_complete(model, part)
    assert (len(part), part.source, part.head_module) == (blocks, "torchvision", head)
    assert len(discover_blocks(model, granularity="stage")) == stages


def test_torchvision_resnet18_layout():
    part = discover_blocks(meta(tvm.resnet18))
    assert part.names == tuple(f"layer{i}.{j}" for i in range(1, 5) for j in range(2))
    assert part.head == ("fc.weight", "fc.bias")


def test_convnext_downsample_joins_next_block():
    part = discover_blocks(meta(tvm.convnext_tiny))
    assert part[3].modules == ("features.2", "features.3.0")  # LayerNorm+conv downsample, then the first CNBlock
    assert part[-1].modules == ("features.7.2", "classifier.0")  # the head's norm joins the last block


def test_hf_bert_and_wrapper():
    bert = transformers.BertModel(tiny_bert_config())
    part = discover_blocks(bert)
    check_complete(bert, part)
    assert (len(part), part.source, part.head_module) == (6, "hf", None)
    assert part[-1].modules == ("encoder.layer.5", "pooler")
    assert all(n.startswith("embeddings.") for n in part.stem)

    wrapped = FakeTextClassifier()
    part = discover_blocks(wrapped)
    check_complete(wrapped, part)
    assert part.names == tuple(f"encoder.encoder.layer.{i}" for i in range(6))
    assert (part.head_module, part.head) == ("head", ("head.weight", "head.bias"))

    seq = transformers.BertForSequenceClassification(tiny_bert_config())
    part = discover_blocks(seq)
    check_complete(seq, part)
    assert (len(part), part.head_module) == (6, "classifier")


def test_hf_gpt2_final_norm_joins_last_block():
    cfg = transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=100, n_positions=32)
    model = transformers.GPT2Model(cfg)
    part = discover_blocks(model)
    check_complete(model, part)
    assert part.names == ("h.0", "h.1", "h.2") and part[-1].modules == ("h.2", "ln_f")
    assert set(part.stem) == {"wte.weight", "wpe.weight"}


def test_generic_modulelist():
    model = Tower(depth=5)
    part = discover_blocks(model)
    check_complete(model, part)
    assert (len(part), part.source) == (5, "generic")
    assert part.names == tuple(f"layers.{i}" for i in range(5))
    assert part.stem == ("inp.weight", "inp.bias")
    assert part.head_module == "out" and part[-1].modules == ("layers.4", "norm")
    assert discover_blocks(model, granularity="stage").names == part.names


# ------------------------------------------------------------------------------------- entry modules


def assert_entries_chain(model: nn.Module, part: Partition, inputs) -> None:
    """A pre-hook on block i's ``modules[0]`` sees exactly the output of block i-1's last module."""
    entries, outputs, handles = {}, {}, []

    def first_tensor(args, kwargs):
        return next(a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor))

    for b in part:
        def pre(_m, args, kwargs, i=b.index):
            entries.setdefault(i, first_tensor(args, kwargs))

        def post(_m, _args, out, i=b.index):
            outputs.setdefault(i, out[0] if isinstance(out, tuple) else out)

        handles.append(model.get_submodule(b.modules[0]).register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(model.get_submodule(b.modules[-1]).register_forward_hook(post))
    with torch.no_grad():
        model.eval()(inputs)
    for h in handles:
        h.remove()
    assert set(entries) == set(range(len(part)))
    for i in range(1, len(part)):
        assert entries[i].shape == outputs[i - 1].shape, (i, part[i].modules)
        assert torch.equal(entries[i], outputs[i - 1]), (i, part[i].modules)


@pytest.mark.parametrize("arch", ["resnet18", "tf_efficientnet_lite0", "test_vit", "test_convnext"])
def test_entry_modules_timm(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False)
    shape = model.pretrained_cfg["input_size"] if "vit" in arch else (3, 32, 32)
    assert_entries_chain(model, discover_blocks(model), torch.randn(2, *shape))


def test_entry_modules_torchvision_and_hf():
    torch.manual_seed(0)
    assert_entries_chain(tvm.mobilenet_v3_small(), discover_blocks(tvm.mobilenet_v3_small()), torch.randn(2, 3, 32, 32))
    wrapped = FakeTextClassifier()
    assert_entries_chain(wrapped, discover_blocks(wrapped), torch.randint(0, 100, (2, 7)))
    tower = Tower()
    assert_entries_chain(tower, discover_blocks(tower), torch.randn(2, 4))


# ------------------------------------------------------------------------------------------- overrides


def test_user_blocks_by_names():
    model = meta(tvm.resnet18)
    part = discover_blocks(model, blocks=["layer3", "layer4.0", ["layer4.1.conv1", "layer4.1.bn1"]])
    check_complete(model, part)
    assert part.source == "user"
    assert part.names == ("layer3", "layer4.0", "layer4.1.conv1")
    assert part[2].modules == ("layer4.1.conv1", "layer4.1.bn1")
    assert part.head_module == "fc"
    assert "layer1.0.conv1.weight" in part.stem and "layer4.1.conv2.weight" in part.stem  # the rest is frozen


def test_user_blocks_by_regex():
    model = meta(timm.create_model, "resnet50")
    by_stage = discover_blocks(model, blocks=r"layer(\d)")  # capture group keys the block
    check_complete(model, by_stage)
    assert by_stage.names == ("layer1", "layer2", "layer3", "layer4")
    assert discover_blocks(model, blocks=r"layer\d.*").names == by_stage.names  # the outermost match wins
    exact = discover_blocks(model, blocks=r"layer4\.\d")  # no group: each full match is a block
    assert exact.names == ("layer4.0", "layer4.1", "layer4.2")
    assert len(exact.stem) == len([n for n, _ in model.named_parameters()]) - 2 - sum(
        len(b.param_names) for b in exact)


@pytest.mark.parametrize(
    "blocks, pattern",
    [
        (["layer1", "layer9"], r"'layer9'.*close names.*layer"),
        (r"^nothing\.(\d+)", r"matched no module"),
        (r"layer(", r"not a valid regular expression"),
        (["layer1", "layer1.0"], r"overlap"),
        (["relu"], r"no parameters"),
        ([], r"non-empty list"),
    ],
)
def test_user_blocks_errors(blocks, pattern):
    with pytest.raises(BlockDiscoveryError, match=pattern):
        discover_blocks(meta(tvm.resnet18), blocks=blocks)


# ---------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("model", [nn.Linear(4, 2), nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))])
def test_no_blocks_error_is_helpful(model):
    with pytest.raises(BlockDiscoveryError) as info:
        discover_blocks(model)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "timm" in msg and "generic" in msg and "blocks=[" in msg and "regex" in msg
    assert str([n for n, _ in model.named_children()]) in msg


def test_bad_granularity():
    with pytest.raises(ConfigError, match=re.escape("'granularity'") + ".*'block', 'stage'.*'layer'"):
        discover_blocks(Tower(), granularity="layer")


def test_find_head_prefers_timm_cfg():
    model = meta(timm.create_model, "convnext_atto")
    assert find_head(model) == ("head.fc",)
    assert discover_blocks(model)[-1].modules == ("stages.3.blocks.1", "head.norm")
