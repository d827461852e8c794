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


# ------------------------------------------------------------------------------- golden: Hugging Face

SEQ2SEQ = dict(d_model=16, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2,
               encoder_ffn_dim=32, decoder_ffn_dim=32, vocab_size=100, max_position_embeddings=64, pad_token_id=1,
               bos_token_id=0, eos_token_id=2, decoder_start_token_id=0)
ENC_DEC = ("encoder.layers.0", "encoder.layers.1", "decoder.layers.0", "decoder.layers.1")


def hf(cls_name: str, cfg_name: str, **config) -> nn.Module:
    """A transformers model from a tiny config, built on the meta device (structure only)."""
    cfg = getattr(transformers, cfg_name)(**config)
    return meta(getattr(transformers, cls_name), cfg)


def tiny_albert(groups: int) -> nn.Module:
    return hf("AlbertModel", "AlbertConfig", num_hidden_layers=4, num_hidden_groups=groups, inner_group_num=2,
              hidden_size=16, num_attention_heads=2, intermediate_size=32, embedding_size=8, vocab_size=100)


@pytest.mark.parametrize("cls_name, cfg_name, extra", [
    ("BartModel", "BartConfig", {}),
    ("MBartModel", "MBartConfig", {}),
    ("PegasusModel", "PegasusConfig", {}),
    ("MarianModel", "MarianConfig", {}),
    ("WhisperModel", "WhisperConfig", dict(num_mel_bins=8, max_source_positions=32, max_target_positions=32)),
])
def test_hf_encoder_decoder_gives_encoder_then_decoder(cls_name, cfg_name, extra):
    config = {**SEQ2SEQ, **extra}
    if cfg_name == "WhisperConfig":
        config.pop("max_position_embeddings")
    model = hf(cls_name, cfg_name, **config)
    part = discover_blocks(model)
    check_complete(model, part)
    assert (part.names, part.source, part.head_module) == (ENC_DEC, "hf", None)
    assert discover_blocks(model, granularity="stage").names == ENC_DEC


def test_hf_bart_embeddings_stay_before_their_stack():
    """BART registers layernorm_embedding after its layers but runs it before them: it must not join a later block."""
    part = discover_blocks(hf("BartModel", "BartConfig", **SEQ2SEQ))
    assert set(part.stem) == {"shared.weight", "encoder.embed_positions.weight", "encoder.layernorm_embedding.weight",
                              "encoder.layernorm_embedding.bias"}
    assert part[1].modules == ("encoder.layers.1", "decoder.embed_positions", "decoder.layernorm_embedding")
    assert part[-1].modules == ("decoder.layers.1",)


def test_hf_t5_and_whisper_layout():
    t5 = hf("T5Model", "T5Config", d_model=16, d_ff=32, d_kv=8, num_heads=2, num_layers=2, num_decoder_layers=2,
            vocab_size=100)
    part = discover_blocks(t5)
    check_complete(t5, part)
    assert part.names == ("encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1")
    assert part.stem == ("shared.weight",)  # the embeddings are tied: one parameter
    assert part[1].modules == ("encoder.block.1", "encoder.final_layer_norm")
    audio = {k: v for k, v in SEQ2SEQ.items() if k != "max_position_embeddings"}
    whisper = hf("WhisperModel", "WhisperConfig", **audio, num_mel_bins=8, max_source_positions=32,
                 max_target_positions=32)
    part = discover_blocks(whisper)
    assert {n.rsplit(".", 1)[0] for n in part.stem} == {"encoder.conv1", "encoder.conv2", "encoder.embed_positions"}
    assert part[1].modules == ("encoder.layers.1", "encoder.layer_norm", "decoder.embed_tokens",
                               "decoder.embed_positions")


def test_hf_convnext_every_stage_in_order():
    model = hf("ConvNextModel", "ConvNextConfig", depths=[2, 2, 3, 2], hidden_sizes=[8, 16, 32, 64])
    part = discover_blocks(model)
    check_complete(model, part)
    assert part.names == tuple(f"encoder.stages.{s}.layers.{j}" for s, d in enumerate([2, 2, 3, 2]) for j in range(d))
    # the downsampling layer joins the next block; it is a ModuleList (iterated, never called): its members are listed
    assert part[2].modules == ("encoder.stages.1.downsampling_layer.0", "encoder.stages.1.downsampling_layer.1",
                               "encoder.stages.1.layers.0")
    assert part[-1].modules == ("encoder.stages.3.layers.1", "layernorm")
    stage = discover_blocks(model, granularity="stage")
    check_complete(model, stage)
    assert stage.names == tuple(f"encoder.stages.{s}" for s in range(4))
    fine, coarse = part.owner(), stage.owner()  # blocks nest in stages
    assert len({(fine[n], coarse[n]) for n in fine if isinstance(fine[n], int)}) == len(part)


def test_hf_resnet_and_swin_every_stage():
    resnet = hf("ResNetForImageClassification", "ResNetConfig", depths=[2, 2, 2, 2], hidden_sizes=[8, 16, 32, 64],
                embedding_size=8)
    part = discover_blocks(resnet)
    check_complete(resnet, part)
    assert part.names == tuple(f"resnet.encoder.stages.{s}.layers.{j}" for s in range(4) for j in range(2))
    assert part.head == ("classifier.1.weight", "classifier.1.bias")  # the Linear after the Flatten
    assert len(discover_blocks(resnet, granularity="stage")) == 4
    swin = hf("SwinModel", "SwinConfig", depths=[2, 2, 2, 2], embed_dim=8, num_heads=[1, 1, 2, 2])
    part = discover_blocks(swin)
    check_complete(swin, part)
    assert part.names == tuple(f"encoder.layers.{s}.blocks.{j}" for s in range(4) for j in range(2))
    assert part[1].modules == ("encoder.layers.0.blocks.1", "encoder.layers.0.downsample")  # merges after the stage
    assert discover_blocks(swin, granularity="stage").names == tuple(f"encoder.layers.{s}" for s in range(4))


def test_hf_vit_and_xlm_zipped_lists():
    vit = hf("ViTForImageClassification", "ViTConfig", num_hidden_layers=3, hidden_size=16, intermediate_size=32,
             num_attention_heads=2)
    part = discover_blocks(vit)
    check_complete(vit, part)
    assert part.names == ("vit.layers.0", "vit.layers.1", "vit.layers.2") and part.head_module == "classifier"
    assert part[-1].modules == ("vit.layers.2", "vit.layernorm")
    xlm = hf("XLMModel", "XLMConfig", n_layers=2, emb_dim=16, n_heads=2, vocab_size=100)
    part = discover_blocks(xlm)  # layer i is the i-th entry of four parallel lists
    check_complete(xlm, part)
    assert [b.modules for b in part] == [(f"attentions.{i}", f"layer_norm1.{i}", f"ffns.{i}", f"layer_norm2.{i}")
                                         for i in range(2)]


def test_hf_multimodal_towers_in_registration_order():
    tower = dict(num_hidden_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=2)
    clip = hf("CLIPModel", "CLIPConfig", text_config=tower, vision_config=tower)
    part = discover_blocks(clip)
    check_complete(clip, part)
    assert part.names == ("text_model.encoder.layers.0", "text_model.encoder.layers.1",
                          "vision_model.encoder.layers.0", "vision_model.encoder.layers.1")


def test_hf_albert_shared_groups():
    one = tiny_albert(groups=1)
    with pytest.raises(BlockDiscoveryError, match=r"shares one layer group across all 4 layers.*num_hidden_groups=1"
                                                  r".*blocks=\['embeddings', 'encoder'\]") as info:
        discover_blocks(one)
    assert isinstance(info.value, ValueError)
    suggested = discover_blocks(one, blocks=["embeddings", "encoder"])  # the override the message suggests works
    check_complete(one, suggested)
    assert suggested.names == ("embeddings", "encoder")
    two = tiny_albert(groups=2)  # each group runs 2 consecutive layers: one block each, never split
    part = discover_blocks(two)
    check_complete(two, part)
    assert part.names == ("encoder.albert_layer_groups.0", "encoder.albert_layer_groups.1")


def test_text_classifier_wrapper():
    from autosub.model.text import TextClassifier

    model = TextClassifier(transformers.BertModel(tiny_bert_config()), num_classes=3)
    part = discover_blocks(model)
    check_complete(model, part)
    assert part.names == tuple(f"encoder.encoder.layer.{i}" for i in range(6))
    assert (part.head_module, part.head) == ("head", ("head.weight", "head.bias"))
    albert = TextClassifier(tiny_albert(groups=1), num_classes=2)
    with pytest.raises(BlockDiscoveryError, match=r"blocks=\['encoder.embeddings', 'encoder.encoder'\]"):
        discover_blocks(albert)


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


def test_entry_modules_hf_stages():
    """Across HF stage boundaries (a downsampling layer joining the next or the previous block) the hooks chain."""
    torch.manual_seed(0)
    convnext = transformers.ConvNextModel(transformers.ConvNextConfig(depths=[2, 2, 3, 2], hidden_sizes=[8, 8, 8, 8]))
    assert_entries_chain(convnext, discover_blocks(convnext), torch.randn(2, 3, 32, 32))
    swin = transformers.SwinModel(transformers.SwinConfig(image_size=32, patch_size=4, window_size=2, embed_dim=8,
                                                          depths=[2, 2], num_heads=[1, 2]))
    assert_entries_chain(swin, discover_blocks(swin), torch.randn(2, 3, 32, 32))


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


def conv_sequential() -> nn.Sequential:
    """A plain backbone no rule discovers: weightless ReLU/pool children between the convolutions."""
    return nn.Sequential(nn.Upsample(scale_factor=1.0), nn.Conv2d(3, 8, 3), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 4))


def test_user_regex_on_vgg_features_attaches_weightless_modules():
    model = meta(tvm.vgg11)
    part = discover_blocks(model, blocks=r"^features\.(\d+)")
    check_complete(model, part)
    convs = [n for n, m in model.features.named_children() if isinstance(m, nn.Conv2d)]
    assert part.names == tuple(f"features.{i}" for i in convs)  # forward (registration) order
    assert part[0].modules == ("features.0", "features.1", "features.2")  # conv, ReLU, pool
    assert part[-1].modules == ("features.18", "features.19", "features.20")
    assert part.head_module == "classifier.6"
    assert {n.rsplit(".", 1)[0] for n in part.stem} == {"classifier.0", "classifier.3"}  # frozen context


def test_user_regex_on_plain_sequential():
    torch.manual_seed(0)
    model = conv_sequential()
    part = discover_blocks(model, blocks=r"^(\d+)")
    check_complete(model, part)
    # the leading weightless module joins the next block; the last Linear stays the head, never a block
    assert [b.modules for b in part] == [("0", "1", "2", "3"), ("4", "5"), ("6", "7", "8", "9")]
    assert part.names == ("1", "4", "6") and (part.head_module, part.stem) == ("10", ())
    assert_entries_chain(model, part, torch.randn(2, 3, 16, 16))  # the entry hooks chain in forward order
    by_names = discover_blocks(model, blocks=["1", "4", ["6", "7"]])  # the list form keeps working
    assert [b.modules for b in by_names] == [("1",), ("4",), ("6", "7")]
    with pytest.raises(BlockDiscoveryError, match=r"blocks=r'\^\(\\d\+\)'"):
        discover_blocks(model)  # the refusal suggests the regex that works


def test_user_regex_matching_only_weightless_modules():
    with pytest.raises(BlockDiscoveryError, match="only modules without parameters"):
        discover_blocks(conv_sequential(), blocks=r"^(?:2|3|5)$")


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
