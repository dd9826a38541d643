import zipfile
from collections import Counter
from unittest import mock

import pytest

from fincompress.data.phrasebank import (
    LABELS,
    PhraseBankFormatError,
    deduplicate,
    read_phrasebank,
    read_split_file,
    split_hash,
    stratified_split,
    write_splits,
)

from .conftest import PHRASEBANK_DIR

OFFICIAL = {
    "50": (4846, {"negative": 604, "neutral": 2879, "positive": 1363}),
    "all": (2264, {"negative": 303, "neutral": 1391, "positive": 570}),
}


@pytest.mark.parametrize("agreement", ["50", "all"])
def test_official_counts_from_folder(data_dir, agreement):
    rows = read_phrasebank(PHRASEBANK_DIR, agreement)
    total, per_label = OFFICIAL[agreement]
    assert len(rows) == total
    assert Counter(r.label for r in rows) == per_label


def test_zip_matches_folder(data_dir):
    from_zip = read_phrasebank(PHRASEBANK_DIR / "FinancialPhraseBank-v1.0.zip", "all")
    assert from_zip == read_phrasebank(PHRASEBANK_DIR / "FinancialPhraseBank-v1.0", "AllAgree")


def test_hub_source_downloads_the_published_zip(data_dir):
    local_zip = str(PHRASEBANK_DIR / "FinancialPhraseBank-v1.0.zip")
    with mock.patch("huggingface_hub.hf_hub_download", return_value=local_zip) as download:
        rows = read_phrasebank("hub", 75)
    download.assert_called_once_with(repo_id="takala/financial_phrasebank",
                                     filename="data/FinancialPhraseBank-v1.0.zip",
                                     repo_type="dataset")
    assert len(rows) == 3453


def test_latin1_text_is_decoded(data_dir):
    texts = [r.text for r in read_phrasebank(PHRASEBANK_DIR, "50")]
    assert any("ä" in t or "ö" in t for t in texts)  # Finnish names survive decoding


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"Profit rose sharply positive", "no '@'"),
        (b"Profit rose sharply .@bullish", "unknown label 'bullish'"),
        (b"Profit \x93rose\x94 sharply .@positive", "undecodable byte 0x93"),
    ],
)
def test_malformed_line_names_file_line_and_content(tmp_path, line, message):
    good = "Sales fell by 5 % .@negative\nThe company is based in Espoo .@neutral\n"
    path = tmp_path / "Sentences_AllAgree.txt"
    path.write_bytes(good.encode("latin-1") + line + b"\n")
    with pytest.raises(PhraseBankFormatError) as error:
        read_phrasebank(tmp_path, "all")
    text = str(error.value)
    assert f"{path}:3" in text and message in text and "Profit" in text


def test_unknown_agreement_level_is_rejected(data_dir):
    with pytest.raises(ValueError, match="agreement must be one of"):
        read_phrasebank(PHRASEBANK_DIR, 90)


def test_duplicates_removed_and_conflicts_dropped(data_dir):
    unique, counts = deduplicate(read_phrasebank(PHRASEBANK_DIR, "50"))
    assert len({r.text for r in unique}) == len(unique) == counts["unique"]
    assert counts["duplicate_rows_removed"] == 4846 - len(unique) > 0
    assert counts["conflicting_sentences_removed"] == 2  # two 50Agree sentences carry two labels


def test_split_is_stratified_seeded_and_disjoint(data_dir):
    unique, _ = deduplicate(read_phrasebank(PHRASEBANK_DIR, "all"))
    splits = stratified_split(unique, (0.7, 0.15, 0.15), seed=42)
    sizes = {name: len(rows) for name, rows in splits.items()}
    assert sum(sizes.values()) == len(unique)
    assert abs(sizes["test"] / len(unique) - 0.15) < 0.01
    ids = [set(r.id for r in rows) for rows in splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    overall = Counter(r.label for r in unique)
    for rows in splits.values():
        share = Counter(r.label for r in rows)
        for label in LABELS:
            assert abs(share[label] / len(rows) - overall[label] / len(unique)) < 0.01
    assert split_hash(stratified_split(unique, (0.7, 0.15, 0.15), seed=42)) == split_hash(splits)
    assert split_hash(stratified_split(unique, (0.7, 0.15, 0.15), seed=7)) != split_hash(splits)
    # the split does not depend on the order of the file
    assert split_hash(stratified_split(unique[::-1], (0.7, 0.15, 0.15), seed=42)) == split_hash(splits)


def test_bad_split_fractions_are_rejected(data_dir):
    with pytest.raises(ValueError, match="summing to 1"):
        stratified_split([], (0.8, 0.15, 0.15), seed=0)


def test_written_split_reads_back(tmp_path, data_dir):
    unique, _ = deduplicate(read_phrasebank(PHRASEBANK_DIR, "all"))
    splits = stratified_split(unique, (0.7, 0.15, 0.15), seed=42)
    write_splits(splits, tmp_path)
    for name, rows in splits.items():
        assert read_split_file(tmp_path / f"{name}.csv") == rows
    assert not list(tmp_path.glob(".*tmp"))


def test_zip_without_the_level_is_an_error(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("FinancialPhraseBank-v1.0/README.txt", "nothing")
    with pytest.raises(FileNotFoundError, match="Sentences_AllAgree.txt"):
        read_phrasebank(path, "all")
