"""Text normalisation (numbers, money, times, ordinals spelled out) and the character tokenizer.

Shared by corpus synthesis (transcripts are exactly what espeak-ng is asked to say), training and scoring.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

from speechadapt.quote import quote

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_ORDINAL = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
            "nine": "ninth", "twelve": "twelfth"}

# -- numbers


def number_to_words(n: int) -> str:
    """0..999999999999 -> "one hundred twenty three" (no "and", no hyphens)."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for unit, word in ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= unit:
            head, rest = divmod(n, unit)
            if head >= 1000 and unit == 10**9:
                break
            return number_to_words(head) + " " + word + ("" if rest == 0 else " " + number_to_words(rest))
    return digits_to_words(str(n))


def ordinal_to_words(n: int) -> str:
    """21 -> "twenty first"."""
    *head, last = number_to_words(n).split()
    if last in _ORDINAL:
        last = _ORDINAL[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def digits_to_words(digits: str) -> str:
    """"0451" -> "zero four five one"."""
    return " ".join(_ONES[int(d)] for d in digits if d.isdigit())


def year_to_words(y: int) -> str:
    """1998 -> "nineteen ninety eight", 2005 -> "two thousand five", 2019 -> "twenty nineteen"."""
    if 2000 <= y < 2010 or not 1100 <= y <= 2099 or y % 1000 < 10:
        return number_to_words(y)
    hi, lo = divmod(y, 100)
    return number_to_words(hi) + " " + ("hundred" if lo == 0 else ("oh " if lo < 10 else "") + number_to_words(lo))


def time_to_words(h: int, m: int) -> str:
    """(7, 5) -> "seven oh five", (9, 0) -> "nine o'clock"."""
    if m == 0:
        return number_to_words(h) + " o'clock"
    return number_to_words(h) + " " + ("oh " if m < 10 else "") + number_to_words(m)


def _int(s: str) -> int:
    return int(s.replace(",", ""))


_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
             "€": ("euro", "euros", "cent", "cents")}


def money_to_words(whole: int, cents: int = 0, currency: str = "$") -> str:
    """(12, 50) -> "twelve dollars and fifty cents"."""
    unit = _CURRENCY[currency]
    out = number_to_words(whole) + " " + unit[0 if whole == 1 else 1]
    if cents:
        out += " and " + number_to_words(cents) + " " + unit[2 if cents == 1 else 3]
    return out


def _money(m: re.Match) -> str:
    return f" {money_to_words(_int(m.group(2)), int((m.group(3) or '0').ljust(2, '0')), m.group(1))} "


def _decimal(m: re.Match) -> str:
    return f" {number_to_words(_int(m.group(1)))} point {digits_to_words(m.group(2))} "


def _cardinal(m: re.Match) -> str:
    s = m.group()
    if len(s.replace(",", "")) > 12 or (s.startswith("0") and len(s) > 1):
        return f" {digits_to_words(s)} "  # phone numbers, codes
    return f" {number_to_words(_int(s))} "


_SUBS: list[tuple[re.Pattern, object]] = [
    (re.compile(r"\b\d{3}[-.]\d{3,4}(?:[-.]\d{4})?\b"), lambda m: f" {digits_to_words(m.group())} "),  # phone
    (re.compile(r"([$£€])\s?(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d{1,2}))?\b"), _money),
    (re.compile(r"\b(\d{1,2}):(\d{2})\s*([ap])\.?m\b\.?"),
     lambda m: f" {time_to_words(int(m.group(1)), int(m.group(2)))} {m.group(3)} m "),
    (re.compile(r"\b(\d{1,2}):(\d{2})\b"), lambda m: f" {time_to_words(int(m.group(1)), int(m.group(2)))} "),
    (re.compile(r"\b(\d+)(?:st|nd|rd|th)\b"), lambda m: f" {ordinal_to_words(int(m.group(1)))} "),
    (re.compile(r"(\d{1,3}(?:,\d{3})+|\d+)\.(\d+)"), _decimal),
    (re.compile(r"\d{1,3}(?:,\d{3})+(?!\d)|\d+"), _cardinal),
    (re.compile(r"%"), " percent "),
    (re.compile(r"&"), " and "),
    (re.compile(r"\+"), " plus "),
    (re.compile(r"@"), " at "),
    (re.compile(r"="), " equals "),
]


def normalize_text(text: str) -> str:
    """Lowercase; numbers, money, times, ordinals, %, & spelled out; only a-z, apostrophe, single spaces remain."""
    text = unicodedata.normalize("NFKD", text.replace("’", "'").replace("‘", "'"))
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    for pattern, repl in _SUBS:
        text = pattern.sub(repl, text)
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
            raise ValueError(f"characters outside the model's alphabet: {quote(''.join(bad))}")
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
