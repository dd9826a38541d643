import json

import pytest

from fincompress.data.news import (
    NewsCorpus,
    NewsFormatError,
    add_sentences,
    build_news_corpus,
    clean_text,
    read_news_file,
    read_reuters_sgml,
    split_sentences,
    stored_news_corpus,
)

from .conftest import NEWS_DIR


def test_reuters_file_titles_bodies_and_entities(data_dir):
    texts = read_reuters_sgml(NEWS_DIR / "reuters21578" / "reut2-000.sgm")
    raw = (NEWS_DIR / "reuters21578" / "reut2-000.sgm").read_text(encoding="latin-1")
    assert raw.count("<REUTERS ") == 1000
    assert "BAHIA COCOA REVIEW" in texts
    assert "The dry period means the temporao will be late this year." in texts
    assert len(texts) > 3 * raw.count("<TITLE>")  # bodies are split into sentences
    joined = "\n".join(texts)
    assert "&lt;" not in joined and "&#3;" not in joined and "\x03" not in joined
    assert "<" in joined  # &lt; decodes to a real angle bracket (company codes like <BRAS>)
    assert not any(t.endswith("Reuter") for t in texts)


def test_sentence_splitting_keeps_abbreviations():
    text = "Shares of U.S. Steel Corp. rose 5 pct. Analysts said demand was firm! Is it? Yes."
    assert split_sentences(text) == [
        "Shares of U.S. Steel Corp. rose 5 pct.",
        "Analysts said demand was firm!",
        "Is it?",
        "Yes.",
    ]


def test_clean_text_removes_links_and_whitespace():
    assert clean_text("Buy $AAPL  now\thttps://t.co/xyz  ok") == "Buy $AAPL now ok"


def test_csv_column_and_missing_column(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('ticker,summary\nAAA,"Profit rose, strongly."\nBBB,Sales fell.\n')
    assert read_news_file(path, "summary") == ["Profit rose, strongly.", "Sales fell."]
    with pytest.raises(NewsFormatError, match="no column 'text'.*ticker"):
        read_news_file(path, "text")


def test_jsonl_reader_names_bad_line(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"text": "Profit rose."}) + "\n{broken\n")
    with pytest.raises(NewsFormatError, match=r"a\.jsonl line 2: not JSON"):
        read_news_file(path, "text")
    path.write_text(json.dumps({"text": "Profit rose."}) + "\n")
    assert read_news_file(path, "text") == ["Profit rose."]


def test_corpus_cleans_filters_deduplicates_and_excludes(tmp_path):
    lines = [
        "Operating profit rose to EUR 13.1 mn from EUR 8.7 mn .",  # a PhraseBank sentence
        "Shares of the bank climbed four percent on Monday https://t.co/abc",
        "Shares of the bank climbed four percent on Monday",  # duplicate once the link goes
        "Too short",
        "The retailer cut its full-year forecast after weak holiday sales.",
    ]
    (tmp_path / "posts.txt").write_text("\n".join(lines) + "\n")
    corpus = build_news_corpus([tmp_path], min_words=4, max_words=64,
                               exclude=["operating profit rose to EUR 13.1 mn  from EUR 8.7 mn ."])
    assert corpus.sentences == [
        "Shares of the bank climbed four percent on Monday",
        "The retailer cut its full-year forecast after weak holiday sales.",
    ]
    assert corpus.counts == {"read": 5, "too_short_or_long": 1, "duplicates": 1,
                             "phrasebank_overlap": 1, "kept": 2}


def test_subsample_is_deterministic(data_dir):
    source = [NEWS_DIR / "seeking_alpha"]
    first = build_news_corpus(source, max_sentences=100, seed=3)
    again = build_news_corpus(source, max_sentences=100, seed=3)
    other = build_news_corpus(source, max_sentences=100, seed=4)
    assert first.sentences == again.sentences and len(first.sentences) == 100
    assert first.sentences != other.sentences
    assert first.counts["kept"] == 100 and first.counts["subsampled_away"] > 0


def test_empty_corpus_is_a_clear_error(tmp_path):
    (tmp_path / "posts.txt").write_text("ok\nfine\n")
    with pytest.raises(ValueError, match="empty after filtering"):
        build_news_corpus([tmp_path])
    with pytest.raises(ValueError, match="no news files"):
        build_news_corpus([tmp_path / "posts.txt"][:0])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_news_corpus([tmp_path / "missing"])


def test_added_sentences_skip_ones_already_present():
    corpus = NewsCorpus(["Shares rose .", "Sales fell ."], {"kept": 2})
    grown = add_sentences(corpus, ["sales  FELL .", "Profit doubled .", "Profit doubled ."], "phrasebank")
    assert grown.sentences == ["Shares rose .", "Sales fell .", "Profit doubled ."]
    assert grown.counts["phrasebank_added"] == 1 and grown.counts["total"] == 3
    assert corpus.sentences == ["Shares rose .", "Sales fell ."]  # the original is untouched


def test_a_stored_corpus_is_read_back_until_a_file_or_setting_changes(tmp_path, monkeypatch):
    from fincompress.data import news

    (tmp_path / "news").mkdir()
    posts = tmp_path / "news" / "posts.txt"
    posts.write_text("".join(f"Shares of bank {n} climbed four percent on Monday\n"
                             for n in range(10)))
    holdout = {"fraction": 0.5, "seed": 0, "groups": {"posts": "posts*"}}
    settings = {"min_words": 4, "exclude": ["Too short"], "holdout": holdout}
    cache = tmp_path / "cache"
    built = stored_news_corpus(cache, [tmp_path / "news"], **settings)
    assert built == build_news_corpus([tmp_path / "news"], **settings)
    assert built.holdout["posts"] and built.sentences  # the hold-out is stored too
    assert len(list(cache.glob("*.json"))) == 1

    def no_build(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(news, "build_news_corpus", no_build)
    assert stored_news_corpus(cache, [tmp_path / "news"], **settings) == built
    with pytest.raises(AssertionError, match="built again"):  # another setting
        stored_news_corpus(cache, [tmp_path / "news"], **{**settings, "min_words": 5})
    monkeypatch.undo()

    posts.write_text(posts.read_text() + "Profit doubled in the third quarter of the year.\n")
    grown = stored_news_corpus(cache, [tmp_path / "news"], **settings)  # same name, new bytes
    assert grown.counts["read"] == 11 and len(list(cache.glob("*.json"))) == 2
    (stored,) = [path for path in cache.glob("*.json") if "Profit doubled" in path.read_text()]
    stored.write_text('{"sentences": ["half-writ')  # unreadable: built again, not trusted
    assert stored_news_corpus(cache, [tmp_path / "news"], **settings) == grown
