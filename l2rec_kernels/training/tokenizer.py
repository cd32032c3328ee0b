"""A word-level tokenizer over a data set's item titles, for the tiny random-weight backbone.

The tiny backbone (``models.tiny.tiny_backbone``) has no tokenizer of its own, and its
random weights need no subword vocabulary: a word-level one over the words the prompts can
contain (the titles and the prompt template) is enough. It is built with Hugging Face
``tokenizers`` (a ``WordLevel`` model trained on those texts, lower-cased, punctuation
split into tokens) and wrapped as a ``PreTrainedTokenizerFast``, so the prompt builder,
``build_item_text_table`` and ``AutoTokenizer.from_pretrained`` treat it like any other
Hugging Face tokenizer, and it is saved as ``tokenizer.json`` (no pickle).

Ids: 0 ``[PAD]``, 1 ``[BOS]`` (put before every text), 2 ``[UNK]`` (a word outside the
vocabulary: only possible when ``max_words`` cut it off), then the words by frequency.
"""

from __future__ import annotations

from collections.abc import Iterable

PAD, BOS, UNK = "[PAD]", "[BOS]", "[UNK]"


def build_word_tokenizer(texts: Iterable[str], max_words: int | None = None):
    """A ``PreTrainedTokenizerFast`` whose vocabulary is the words of ``texts`` (the most
    frequent ``max_words`` of them when given; the rest become ``[UNK]``)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if max_words is not None and (isinstance(max_words, bool) or not isinstance(max_words, int)
                                  or max_words < 1):
        raise ValueError(f"max_words must be None or a positive int, got {max_words!r}")
    specials = [PAD, BOS, UNK]
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Every punctuation character is a token of its own: titles glue them to words and to
    # each other ("(1995);"), which would otherwise give words no other title has.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation("isolated")])
    size = len(specials) + (max_words if max_words is not None else 10 ** 9)
    trainer = trainers.WordLevelTrainer(vocab_size=size, min_frequency=1, special_tokens=specials,
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, bos_token=BOS, unk_token=UNK)
    hf.padding_side = "left"  # the prompts' side (the model reads each prompt's last token)
    return hf


def prompt_texts(titles: Iterable[str], template: str) -> list[str]:
    """What a word tokenizer for prompts built from ``template`` and ``titles`` must cover:
    every title, and the template with the title separator ("; ") in its placeholder."""
    return [*titles, template.replace("{titles}", "; ")]
