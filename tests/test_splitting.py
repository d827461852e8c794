"""Capture/replay from a block boundary must reproduce a plain forward, or be refused."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from autosub.model.blocks import Block, Partition
from autosub.model.splitting import capture, eval_mode, replay, verify


def hand_partition(model: nn.Module, block_paths: list[str], head: str) -> Partition:
    names = [n for n, _ in model.named_parameters()]
    blocks = tuple(
        Block(i, p, (p,), tuple(n for n in names if n.startswith(p + ".")), 0) for i, p in enumerate(block_paths)
    )
    inside = {n for b in blocks for n in b.param_names}
    head_names = tuple(n for n in names if n.startswith(head + "."))
    stem = tuple(n for n in names if n not in inside and n not in head_names)
    return Partition(blocks, stem, head_names, head, "user")


class Skip(nn.Module):
    """The head reuses block 0's output: no replay from a later boundary can reproduce it."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(6, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = self.stem(x)
        outs = []
        for b in self.blocks:
            h = torch.relu(b(h))
            outs.append(h)
        return self.head(h + outs[0])


def test_every_boundary_of_a_timm_resnet_replays_exactly(test_resnet):
    from autosub.model.blocks import discover_blocks

    part = discover_blocks(test_resnet)
    x = torch.randn(4, 3, 32, 32)
    for b in range(len(part) + 1):
        assert verify(test_resnet, part, b, x) == ("stand_in", None)


def test_replay_runs_the_real_batch_from_cached_inputs(test_resnet):
    from autosub.model.blocks import discover_blocks

    part = discover_blocks(test_resnet)
    x = torch.randn(5, 3, 32, 32)
    with eval_mode(test_resnet), torch.no_grad():
        full = test_resnet(x)
        slots, tensors = capture(test_resnet, part, [2], x)[2]
        out = replay(test_resnet, part, 2, slots, tensors, x[:1])
    assert out.shape == full.shape
    torch.testing.assert_close(out, full, rtol=1e-4, atol=1e-5)


def test_capture_stops_after_the_deepest_boundary(test_resnet):
    from autosub.model.blocks import discover_blocks

    part = discover_blocks(test_resnet)
    calls = []
    handle = test_resnet.get_submodule(part.head_module).register_forward_hook(lambda *a: calls.append(1))
    try:
        got = capture(test_resnet, part, [0, 1], torch.randn(2, 3, 32, 32))
    finally:
        handle.remove()
    assert set(got) == {0, 1} and calls == []


def test_cross_boundary_skip_is_detected():
    torch.manual_seed(0)
    model = Skip()
    part = hand_partition(model, ["blocks.0", "blocks.1", "blocks.2"], "head")
    mode, reason = verify(model, part, 1, torch.randn(4, 6))
    assert mode is None and "stand_in: replayed output differs" in reason and "skip: replayed" in reason
    assert verify(model, part, 0, torch.randn(4, 6)) == ("stand_in", None)  # block 0 runs after boundary 0


def test_a_text_classifier_replays_by_skipping_the_prefix_blocks():
    """A BERT layer gets its attention mask as a keyword argument, and the pooling reads the model's own mask:
    the stand-in mode must be refused, and the skip mode must reproduce the forward exactly."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()

    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = bert
            self.head = nn.Linear(16, 2)

        def forward(self, inputs):
            h = self.encoder(**inputs).last_hidden_state
            m = inputs["attention_mask"].unsqueeze(-1).float()
            return self.head((h * m).sum(1) / m.sum(1))

    model = Wrap().eval()
    part = hand_partition(model, [f"encoder.encoder.layer.{i}" for i in range(3)], "head")
    ids = torch.randint(1, 50, (4, 10))
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[3, 3:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    for b in range(3):
        assert verify(model, part, b, inputs) == ("skip", None), b
    assert verify(model, part, 3, inputs) == ("stand_in", None)  # the head's input is already pooled
