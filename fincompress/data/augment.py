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
        self.find_neighbours([word])
        return self._cache[word.lower()]

    def find_neighbours(self, words: list[str], chunk: int = 512) -> None:
        """Find the neighbours of every word not yet looked up (a word stands for all its
        casings: its first casing here is the one tokenized), ``chunk`` words per matrix
        product rather than one product per word, which was most of augmentation's time."""
        todo = {}
        for word in words:
            if word.lower() not in self._cache:
                todo.setdefault(word.lower(), word)
        if not todo:
            return
        pieces = self.tokenizer(list(todo.values()), add_special_tokens=False)["input_ids"]
        single = []
        for key, ids in zip(todo, pieces):
            if len(ids) == 1:
                single.append((key, ids[0]))
            else:
                self._cache[key] = []
        for start in range(0, len(single), chunk):
            part = single[start:start + chunk]
            similarity = self.embeddings[[i for _, i in part]] @ self.embeddings.T
            similarity[:, ~self.candidate] = -2
            nearest = similarity.topk(self.neighbours + 2, dim=1).indices.tolist()
            for (key, _), indices in zip(part, nearest):
                found = [self.vocab[i] for i in indices if self.vocab[i].lower() != key]
                self._cache[key] = found[:self.neighbours]

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
        if variants_per_sentence:  # every word that may be replaced, looked up at once
            self.find_neighbours([word for text in sentences for word in WORD.findall(text)
                                  if len(word) >= self.min_letters])
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

