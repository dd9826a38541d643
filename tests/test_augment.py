"""TinyBERT-style word-replacement augmentation of the in-domain transfer text."""

import random

import pytest
import torch

from fincompress.data.augment import WordNeighbourAugmenter
from fincompress.data.datamodule import phrasebank_split
from fincompress.data.phrasebank import comparable
from fincompress.stages.distill import stage1_inputs, transfer_sentences

from .conftest import compose_config


def _ids(tokenizer, *words):
    return [tokenizer.convert_tokens_to_ids(word) for word in words]


@pytest.fixture(scope="module")
def embeddings(minilm_tokenizer):
    """Random word embeddings in which 'fell' is the nearest word to 'rose' and 'revenue' to
    'profit' (and the other way round)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(len(minilm_tokenizer), 64, generator=generator)
    rose, fell, profit, revenue = _ids(minilm_tokenizer, "rose", "fell", "profit", "revenue")
    weight[fell] = weight[rose] + 0.01 * torch.randn(64, generator=generator)
    weight[revenue] = weight[profit] + 0.01 * torch.randn(64, generator=generator)
    return weight


def test_neighbours_are_the_nearest_other_words(minilm_tokenizer, embeddings):
    augmenter = WordNeighbourAugmenter(minilm_tokenizer, embeddings, neighbours=3)
    assert augmenter.neighbours_of("rose")[0] == "fell"
    assert augmenter.neighbours_of("Profit")[0] == "revenue"
    found = augmenter.neighbours_of("rose")
    assert len(found) == 3 and "rose" not in found
    assert all(w.isalpha() and len(w) >= 3 for w in found)  # no pieces like '##s' or '[SEP]'
    assert augmenter.neighbours_of("Technopolis") == []  # not one word piece: kept as it is


def test_every_word_is_swapped_at_probability_one_but_numbers_and_short_words_stay(
        minilm_tokenizer, embeddings):
    augmenter = WordNeighbourAugmenter(minilm_tokenizer, embeddings, neighbours=1, replace_prob=1.0)
    text = augmenter.variant("Profit rose 5.2 % to EUR5m , an increase .", random.Random(0))
    words = text.split()
    assert words[:2] == ["Revenue", "fell"]  # the capital letter is kept
    assert words[2:6] == ["5.2", "%", "to", "EUR5m"] and words[7] == "an"
    assert words[8] != "increase"


def test_variants_are_distinct_seeded_and_never_an_excluded_sentence(minilm_tokenizer, embeddings):
    augmenter = WordNeighbourAugmenter(minilm_tokenizer, embeddings, neighbours=1, replace_prob=1.0)
    sentences = ["Profit rose .", "Net sales rose sharply in the quarter ."]
    # with one neighbour and every word swapped, "Profit rose ." has exactly one variant
    assert augmenter.augment(sentences[:1], 3) == ["Revenue fell ."]
    assert augmenter.augment(sentences[:1], 3, exclude=["revenue  FELL ."]) == []

    augmenter = WordNeighbourAugmenter(minilm_tokenizer, embeddings, neighbours=5)
    variants = augmenter.augment(sentences, 4, seed=3)
    assert variants == augmenter.augment(sentences, 4, seed=3)
    assert variants != augmenter.augment(sentences, 4, seed=4)
    assert len(variants) == len(set(variants)) and not set(variants) & set(sentences)
    assert 4 < len(variants) <= 8


@pytest.mark.parametrize("settings, message", [
    ({"neighbours": 0}, "neighbours must be >= 1"),
    ({"replace_prob": 0.0}, r"replace_prob must be in \(0, 1\]"),
    ({"replace_prob": 1.5}, r"replace_prob must be in \(0, 1\]"),
])
def test_bad_settings_are_named(minilm_tokenizer, embeddings, settings, message):
    with pytest.raises(ValueError, match=message):
        WordNeighbourAugmenter(minilm_tokenizer, embeddings, **settings)


def test_augmented_transfer_text_leaves_out_val_and_test(tmp_path, data_dir, minilm_tokenizer,
                                                         embeddings):
    model = torch.nn.Module()
    model.get_input_embeddings = lambda: torch.nn.Embedding.from_pretrained(embeddings)
    cfg = compose_config(["distill.pseudo_label.add_phrasebank=50",
                          "distill.pseudo_label.augment.variants_per_sentence=1",
                          "distill.pseudo_label.augment.replace_prob=0.2"], tmp_path)
    split = phrasebank_split(cfg)
    rows = split.splits["val"] + split.splits["test"]
    added = transfer_sentences(cfg, model, minilm_tokenizer, rows)
    assert len(added["phrasebank"]) == 4159
    assert 0.9 * 4159 < len(added["augmented"]) <= 4159
    held_out = {comparable(r.text) for r in rows}
    variants = {comparable(t) for t in added["augmented"]}
    assert not variants & held_out
    assert not variants & {comparable(t) for t in added["phrasebank"]}


def test_augmentation_needs_phrasebank_transfer_text_and_changes_the_stage1_key(tmp_path,
                                                                              minilm_tokenizer):
    news_only = "distill.pseudo_label.add_phrasebank=null"
    cfg = compose_config(["distill.pseudo_label.augment.variants_per_sentence=4", news_only],
                         tmp_path)
    with pytest.raises(ValueError, match="add_phrasebank is null"):
        transfer_sentences(cfg, None, minilm_tokenizer, [])
    assert transfer_sentences(compose_config([news_only], tmp_path), None, minilm_tokenizer,
                              []) == {}

    cfg = compose_config(["distill.pseudo_label.augment.variants_per_sentence=4"], tmp_path)
    off = compose_config([], tmp_path)
    # off, the settings are those hashed before augmentation existed
    assert "augment" not in stage1_inputs(off, {})["pseudo_label"]
    assert stage1_inputs(cfg, {})["pseudo_label"]["augment"]["variants_per_sentence"] == 4
    assert stage1_inputs(cfg, {}) != stage1_inputs(off, {})
