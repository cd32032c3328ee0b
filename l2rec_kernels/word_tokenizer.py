"""Word-level tokenizers: the package's one home for them.

Two places need a tokenizer without a subword vocabulary: the tiny random-weight backbone
that training builds over a data set's titles, and the synthetic catalogue of the examples,
demos and serving tests. Both get the same kind of tokenizer: Hugging Face ``tokenizers``'
``WordLevel`` model (NFKC, lower-cased, split on whitespace with every punctuation
character a token of its own: titles glue them to words, "(1995);") wrapped as a
``PreTrainedTokenizerFast``, so the prompt builders, ``build_item_text_table`` and
``AutoTokenizer.from_pretrained`` treat it like any other Hugging Face tokenizer, and it
is saved as ``tokenizer.json`` (no pickle). Only the vocabulary differs:

* ``build_word_tokenizer(texts, max_words)``: learnt from texts. Ids: 0 ``[PAD]``, 1
  ``[BOS]`` (put before every text), 2 ``[UNK]`` (a word outside the vocabulary: only
  possible when ``max_words`` cut it off), then the words by frequency.
* ``fixed_word_tokenizer(words, specials, unk=..., bos=...)``: a vocabulary given in order:
  the special tokens first, then ``words`` (lower-case, as the normaliser makes every
  text), so ids can be pinned.

``prompt_texts`` is what a tokenizer for prompts built from a template must cover.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PAD, BOS, UNK = "[PAD]", "[BOS]", "[UNK]"


def build_word_tokenizer(texts: Iterable[str], max_words: int | None = None):
    """A ``PreTrainedTokenizerFast`` whose vocabulary is the words of ``texts`` (the most
    frequent ``max_words`` of them when given; the rest become ``[UNK]``), adding ``[BOS]``
    before every text."""
    from tokenizers import trainers

    if max_words is not None and (isinstance(max_words, bool) or not isinstance(max_words, int)
                                  or max_words < 1):
        raise ValueError(f"max_words must be None or a positive int, got {max_words!r}")
    specials = [PAD, BOS, UNK]
    tok = _word_level(None, UNK)
    size = len(specials) + (max_words if max_words is not None else 10 ** 9)
    trainer = trainers.WordLevelTrainer(vocab_size=size, min_frequency=1, special_tokens=specials,
                                        show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return _wrap(tok, pad=PAD, bos=BOS, unk=UNK)


def fixed_word_tokenizer(words: Sequence[str], specials: Sequence[str] = (PAD, BOS, UNK), *,
                         unk: str | None = None, bos: str | None = None):
    """A ``PreTrainedTokenizerFast`` with ids ``specials`` (the first is padding) then
    ``words``, in order. ``unk``: the special token an unknown word becomes, or None to refuse
    unknown words (ValueError from ``encode_words``); ``bos``: a special token put before
    every text, or None for none."""
    vocab = {w: i for i, w in enumerate([*specials, *words])}
    if len(vocab) != len(specials) + len(words):
        raise ValueError("words and specials must be distinct")
    for name, token in (("unk", unk), ("bos", bos)):
        if token is not None and token not in specials:
            raise ValueError(f"{name}={token!r} must be one of specials {list(specials)}")
    if any(w != w.lower() or not w or w.split() != [w] for w in words):
        raise ValueError("words must be lower-case and free of whitespace (the normaliser "
                         "lower-cases every text)")
    return _wrap(_word_level(vocab, unk), pad=specials[0], bos=bos, unk=unk)


def encode_words(tokenizer, text: str) -> list[int]:
    """``text``'s ids without special tokens; ValueError naming the first unknown word when
    the vocabulary has no unknown-word token."""
    try:
        return tokenizer.encode(text, add_special_tokens=False)
    except Exception:  # tokenizers raises a bare Exception for a missing word: name it
        backend = tokenizer.backend_tokenizer
        vocab = backend.get_vocab()
        words = backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text))
        unknown = next((w for w, _ in words if w not in vocab), None)
        if unknown is None:
            raise
        raise ValueError(f"unknown word {unknown!r}") from None


def prompt_texts(titles: Iterable[str], template: str) -> list[str]:
    """What a word tokenizer for prompts built from ``template`` and ``titles`` must cover:
    every title, and the template with the title separator ("; ") in its placeholder."""
    return [*titles, template.replace("{titles}", "; ")]


def _word_level(vocab: dict[str, int] | None, unk: str | None):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    model = models.WordLevel(vocab, unk_token=unk) if vocab is not None else models.WordLevel(unk_token=unk)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation("isolated")])
    return tok


def _wrap(tok, *, pad: str, bos: str | None, unk: str | None):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tokens = {"pad_token": pad}
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
        tokens["bos_token"] = bos
    if unk is not None:
        tokens["unk_token"] = unk
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)
    hf.padding_side = "left"  # the prompts' side (the model reads each prompt's last token)
    return hf
