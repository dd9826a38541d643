"""Word-replacement augmentation of in-domain text, after TinyBERT's data augmentation
(Jiao et al. 2020, Algorithm 1): each word is replaced, with probability ``replace_prob``, by
one of its ``neighbours`` nearest words, and the teacher labels every variant, so the student
sees the teacher's decisions around each in-domain sentence, not only at it.

TinyBERT draws candidates from BERT's masked-LM (one-piece words) and GloVe (the rest). Here
they come from the teacher's own word-piece embeddings (cosine nearest neighbours), which need
no extra download. Neighbours there include antonyms ("rose" -> "fell", "above" -> "below");
that is wanted, as the teacher relabels the variant. Only words of letters that are a single
word piece are replaced: numbers, currency amounts and punctuation stay as they are.
"""

from __future__ import annotations

import random
import re

import torch
from tqdm.auto import tqdm

from fincompress.data.phrasebank import comparable

# a word of letters not glued to digits or apostrophes ("EUR5m", "don't" stay whole)
WORD = re.compile(r"(?<![\w'])[A-Za-z]+(?![\w'])")


class WordNeighbourAugmenter:
    """Makes variants of sentences by swapping words for their embedding neighbours.

    Args:
        tokenizer: the tokenizer whose vocabulary ``embeddings`` rows follow.
        embeddings: (vocab, hidden) word-piece embeddings, e.g. the teacher's input embeddings.
        neighbours: candidates per word (TinyBERT: 15).
        replace_prob: chance that each replaceable word is replaced (TinyBERT: 0.4).
        min_letters: shorter words are never replaced.
    """

    def __init__(self, tokenizer, embeddings: torch.Tensor, neighbours: int = 15,
                 replace_prob: float = 0.4, min_letters: int = 3):
        if neighbours < 1:
            raise ValueError(f"augment.neighbours must be >= 1, got {neighbours}")
        if not 0 < replace_prob <= 1:
            raise ValueError(f"augment.replace_prob must be in (0, 1], got {replace_prob}")
        self.tokenizer = tokenizer
        self.neighbours = neighbours
        self.replace_prob = replace_prob
        self.min_letters = min_letters
        self.vocab = tokenizer.convert_ids_to_tokens(list(range(embeddings.shape[0])))
        self.embeddings = torch.nn.functional.normalize(embeddings.detach().float(), dim=-1)
        self.candidate = torch.tensor([_is_word(t, min_letters) for t in self.vocab])
        self._cache: dict[str, list[str]] = {}

    def neighbours_of(self, word: str) -> list[str]:
        """The word's nearest other words in the embedding space, closest first; empty for a
        word that is not one word piece."""
        key = word.lower()
        if key not in self._cache:
            ids = self.tokenizer(word, add_special_tokens=False)["input_ids"]
            found = []
            if len(ids) == 1:
                similarity = self.embeddings @ self.embeddings[ids[0]]
                similarity[~self.candidate] = -2
                for index in similarity.topk(self.neighbours + 2).indices.tolist():
                    if self.vocab[index].lower() != key and len(found) < self.neighbours:
                        found.append(self.vocab[index])
            self._cache[key] = found
        return self._cache[key]

    def variant(self, sentence: str, rng: random.Random) -> str:
        """One variant of ``sentence`` (it may come out unchanged)."""
        def swap(match: re.Match) -> str:
            word = match.group(0)
            if len(word) < self.min_letters or rng.random() >= self.replace_prob:
                return word
            candidates = self.neighbours_of(word)
            return _match_case(rng.choice(candidates), word) if candidates else word

        return WORD.sub(swap, sentence)

    def augment(self, sentences: list[str], variants_per_sentence: int, seed: int = 0,
                exclude: list[str] = ()) -> list[str]:
        """Up to ``variants_per_sentence`` distinct variants of each sentence, in order. A
        variant equal (as letters and digits) to any input sentence or to one of ``exclude``
        (say, the evaluation sentences) is dropped."""
        if variants_per_sentence < 0:
            raise ValueError(f"augment.variants_per_sentence must be >= 0, got {variants_per_sentence}")
        rng = random.Random(seed)
        seen = {comparable(text) for text in [*sentences, *exclude]}
        variants = []
        for sentence in tqdm(sentences, desc="augmenting sentences", disable=not sentences,
                             mininterval=2):
            made = 0
            for _ in range(3 * variants_per_sentence):  # a few tries: short sentences repeat
                if made == variants_per_sentence:
                    break
                text = self.variant(sentence, rng)
                if comparable(text) not in seen:
                    seen.add(comparable(text))
                    variants.append(text)
                    made += 1
        return variants


def _is_word(piece: str, min_letters: int) -> bool:
    return piece.isascii() and piece.isalpha() and len(piece) >= min_letters


def _match_case(candidate: str, original: str) -> str:
    if original.isupper() and len(original) > 1:
        return candidate.upper()
    if original[0].isupper():
        return candidate[0].upper() + candidate[1:]
    return candidate

