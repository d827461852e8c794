"""torch.export of a MultiTaskModel: one program whose outputs equal the eager model's, at any batch size."""
from __future__ import annotations

import pytest
import torch

from autosub import Delta, ExportError, MultiTaskModel, export_program
from autosub.errors import ConfigError
from autosub.model.text import TextClassifier
from conftest import perturbed_copy


def multitask(trunk, sels):
    tuned = {f"t{i}": perturbed_copy(trunk, s, 2 + i, seed=i) for i, s in enumerate(sels)}
    deltas = {n: Delta.from_model(m, s, trunk=trunk) for (n, m), s in zip(tuned.items(), sels)}
    return MultiTaskModel(trunk, deltas), tuned


def test_a_cnn_multitask_program_matches_eager_at_other_batch_sizes(test_resnet):
    mt, tuned = multitask(test_resnet, [(3,), (1, 3), ()])
    program = export_program(mt, torch.randn(2, 3, 32, 32))
    run = program.module()
    with torch.no_grad():
        for batch in (1, 3, 6):
            x = torch.randn(batch, 3, 32, 32)
            out = run(x)
            assert set(out) == {"t0", "t1", "t2"}
            for name, model in tuned.items():
                torch.testing.assert_close(out[name], model(x), rtol=1e-4, atol=1e-5)


def test_a_text_multitask_program_takes_dict_inputs():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    trunk = TextClassifier(BertModel(BertConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                                intermediate_size=37, vocab_size=100)), 2).eval()
    mt, tuned = multitask(trunk, [(2,), ()])
    ids = torch.randint(1, 100, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[1, 3:] = 0
    program = export_program(mt, {"input_ids": ids[:1], "attention_mask": mask[:1]})  # 1 example: widened to 2
    with torch.no_grad():
        x = {"input_ids": ids, "attention_mask": mask}
        out = program.module()(x)
        for name, model in tuned.items():
            torch.testing.assert_close(out[name], model(x), rtol=1e-4, atol=1e-5)


class Branchy(torch.nn.Module):
    """Glue with data-dependent control flow: fine eagerly, not traceable into one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Linear(6, 8)
        self.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x):
        h = self.stem(x)
        if h.sum() > 0:  # decided by the values, not the shapes
            h = -h
        for b in self.blocks:
            h = torch.relu(b(h))
        return self.head(h)


def test_bad_arguments_and_untraceable_models_raise_clear_errors(test_resnet):
    with pytest.raises(ConfigError, match="MultiTaskModel"):
        export_program(test_resnet, torch.randn(2, 3, 32, 32))
    from autosub import discover_blocks

    torch.manual_seed(0)
    model = Branchy().eval()
    part = discover_blocks(model, blocks=["blocks.0", "blocks.1"])
    delta = Delta.from_model(perturbed_copy(model, (1,), 3, 0, partition=part), (1,), trunk=model, partition=part)
    mt = MultiTaskModel(model, {"a": delta}, partition=part)
    x = torch.randn(4, 6)
    assert mt(x)["a"].shape == (4, 3)  # eager serving works
    with pytest.raises(ExportError, match="torch.export could not trace"):
        export_program(mt, x)
