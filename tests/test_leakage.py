"""No evaluation sentence reaches training, on the real data: not through the news, not
through the PhraseBank transfer text, not through its augmented variants; nor does any
sentence of the robustness hold-out (a seeded tenth of the market posts and of the Seeking
Alpha sentences). Sentences are
compared as letters and digits, so "Financial terms were not disclosed ." (PhraseBank's
spacing) and "Financial terms were not disclosed." (a news copy) are the same sentence."""

from fincompress.data.datamodule import phrasebank_split
from fincompress.data.news import add_sentences, build_news_corpus, robustness_holdout
from fincompress.data.phrasebank import comparable, read_phrasebank
from fincompress.models.sources import load_classifier
from fincompress.stages.distill import transfer_sentences

from .conftest import compose_config

# the main job's transfer text, with one augmented variant of each sentence
OVERRIDES = ["distill.pseudo_label.add_phrasebank=50",
             "distill.pseudo_label.augment.variants_per_sentence=1"]


def test_no_val_or_test_sentence_is_among_the_training_sentences(tmp_path, data_dir):
    cfg = compose_config(OVERRIDES, tmp_path)
    rows = phrasebank_split(cfg).splits["val"] + phrasebank_split(cfg).splits["test"]
    held_out = {comparable(row.text) for row in rows}
    assert len(held_out) == 678

    news_sources = [str(data_dir / "news")]
    unfiltered = build_news_corpus(news_sources).sentences
    copies = [text for text in unfiltered if comparable(text) in held_out]
    assert "Financial terms were not disclosed." in copies  # the news does hold such copies

    phrasebank = [row.text for row in read_phrasebank(cfg.news.exclude_phrasebank, "50")]
    # every news sentence but the hold-out, as the configured corpus is built
    corpus = build_news_corpus(news_sources, exclude=phrasebank, holdout=cfg.news.holdout)
    model, tokenizer = load_classifier("bundled:minilm-l6", list(cfg.data.labels))
    extra = transfer_sentences(cfg, model, tokenizer, rows)
    assert len(extra["phrasebank"]) > 4000 and len(extra["augmented"]) > 3000
    for name, sentences in extra.items():
        corpus = add_sentences(corpus, sentences, name)
    training = {comparable(text) for text in corpus.sentences}
    assert len(training) > 140_000
    assert not held_out & training
    # the robustness hold-out: about a tenth of each group, read again from its files alone
    # (as the distill run scores it), and none of it in training
    robust = robustness_holdout(news_sources, cfg.news.holdout)
    assert robust == corpus.holdout
    assert 2000 < len(robust["market_posts"]) < 3000 and 100 < len(robust["seeking_alpha"]) < 300
    robust_texts = {comparable(text) for texts in robust.values() for text in texts}
    assert not robust_texts & training
    assert robust_texts <= {comparable(text) for text in unfiltered}  # removed, not absent

