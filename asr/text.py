"""Text normalisation and the character tokenizer."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_ONES = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n: int) -> str:
    """0..999999999 -> English words ("one hundred twenty three")."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for unit, word in ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= unit:
            head, rest = divmod(n, unit)
            return number_to_words(head) + " " + word + ("" if rest == 0 else " " + number_to_words(rest))
    raise AssertionError(n)


def normalize_text(text: str) -> str:
    """Lowercase, digits spelled out, only a-z, apostrophe and single spaces remain."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"\d+", lambda m: " " + number_to_words(int(m.group())) + " " if len(m.group()) < 10 else " ", text)
    text = re.sub(r"[^a-z' ]+", " ", text)
    text = re.sub(r"(?<![a-z])'|'(?![a-z])", " ", text)  # quotes, not apostrophes
    return " ".join(text.split())


@dataclass(frozen=True)
class CharTokenizer:
    """Token 0 is the CTC blank; token 1 the word separator (space)."""

    tokens: tuple[str, ...] = field(default_factory=lambda: ("<blank>", " ", "'") + tuple("abcdefghijklmnopqrstuvwxyz"))

    def __post_init__(self):
        if self.tokens[0] != "<blank>" or self.tokens[1] != " ":
            raise ValueError("character tokenizer needs '<blank>' at 0 and ' ' at 1")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def blank(self) -> int:
        return 0

    @property
    def space(self) -> int:
        return 1

    def encode(self, text: str) -> list[int]:
        """Normalised text -> ids. Characters outside the alphabet raise ValueError."""
        bad = sorted({c for c in text if c not in self._index or c == "<blank>"})
        if bad:
            raise ValueError(f"characters outside the model's alphabet: {''.join(bad)!r}")
        return [self._index[c] for c in text]

    def decode(self, ids) -> str:
        return "".join(self.tokens[i] for i in ids if i != 0)

    def to_dict(self) -> dict:
        return {"type": "char", "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, d: dict) -> "CharTokenizer":
        if d.get("type") != "char":
            raise ValueError(f"unsupported tokenizer type {d.get('type')!r}; only 'char'")
        return cls(tuple(d["tokens"]))
