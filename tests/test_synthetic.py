"""SyntheticCatalogue: model inputs from histories, and bad item ids named, not mis-read."""

import re

import numpy as np
import pytest
import torch

from l2rec_kernels.synthetic import BOS, SEP, SyntheticCatalogue


@pytest.fixture
def cat():
    return SyntheticCatalogue(num_items=40, num_genres=4, max_history=3)


def test_batch_builds_prompts_and_histories(cat):
    b = cat.batch([[3, 17, 2, 9], [8]])
    # histories keep their last max_history items, 0-padded on the right
    assert b["history_ids"].tolist() == [[17, 2, 9], [8, 0, 0]]
    # prompts list every history item's title (the whole history), left-padded
    first = cat.prompt_tokens([3, 17, 2, 9])
    assert first[0] == BOS and first.count(SEP) == 4
    assert b["input_ids"][0].tolist() == first
    assert b["attention_mask"][1].tolist()[-len(cat.prompt_tokens([8])):] == [1] * 4
    assert cat.encode(cat.titles[7]) == cat.prompt_tokens([8])[1:3]


def test_the_tokenizer_is_a_saved_hugging_face_one_with_pinned_ids(cat, tmp_path):
    """[PAD] [BOS] [SEP], the genre words, the item words; unknown words are refused; it
    reloads through AutoTokenizer with the same ids."""
    from transformers import AutoTokenizer

    assert cat.encode("genre0 genre3 item1 item40") == [3, 6, 7, 46]
    assert len(cat.tokenizer) == 3 + 4 + 40 and cat.tokenizer.pad_token_id == 0
    with pytest.raises(ValueError, match="item41"):
        cat.encode("genre0 item41")
    cat.tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(cat.titles)["input_ids"] == [cat.encode(t) for t in cat.titles]


def test_ids_of_other_integer_types_are_accepted(cat):
    want = cat.batch([[1, 2], [3, 4]])
    for histories in ([[np.int64(1), torch.tensor(2)], (3, 4)], [range(1, 3), range(3, 5)],
                      torch.tensor([[1, 2], [3, 4]])):
        got = cat.batch(histories)
        assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("histories, message", [
    ([[42]], "history item ids must be in 1..40, got 42 (user 0)"),
    ([[1, 2], [5, 41]], "history item ids must be in 1..40, got 41 (user 1)"),
    ([[-1]], "history item ids must be in 1..40, got -1 (user 0)"),  # not the last title
    ([[3, 0, 4]], "history item ids must be in 1..40, got 0 (user 0)"),  # 0 is padding, not an item
    ([[2.0]], "history item ids must be ints, got 2.0 (float) (user 0)"),
    ([[True]], "history item ids must be ints, got True (bool) (user 0)"),
    ([["7"]], "history item ids must be ints, got '7' (str) (user 0)"),
])
def test_bad_ids_are_named(cat, histories, message):
    for build in (cat.batch, cat.history_tensor, cat.prompts):
        with pytest.raises(ValueError, match=re.escape(message) + "$"):
            build(histories)


def test_prompt_tokens_checks_its_history(cat):
    with pytest.raises(ValueError, match=r"must be in 1..40, got 42$"):
        cat.prompt_tokens([1, 42])


def test_histories_must_be_lists_of_ids(cat):
    message = "a history must be a sequence of item ids, got 3 (user 0)"
    with pytest.raises(TypeError, match=re.escape(message)):
        cat.batch([3, 17])  # one user's history, not a list of histories
    with pytest.raises(TypeError, match="histories must be a sequence"):
        cat.batch(5)


def test_empty_history_is_allowed(cat):
    b = cat.batch([[], [4]])
    assert b["history_ids"][0].tolist() == [0, 0, 0]
    assert cat.prompt_tokens([]) == [BOS]
