"""Text for synthetic corpora: normalisation (numbers spelled out) and a sentence generator.

Transcripts use only a-z, apostrophe and single spaces, and are exactly what espeak-ng is asked to say.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np

from speechadapt.asr.text import (  # noqa: F401  (re-exported for the generator)
    digits_to_words, money_to_words, normalize_text, number_to_words, ordinal_to_words, time_to_words, year_to_words,
)

DICT_WORDS = Path("/usr/share/dict/words")  # Debian: apt-get install wamerican
BROAD_VOCAB = 10000  # generator vocabulary when vocab_size is not set

_TWO_LETTER = set("to of in is it on be as at he by my or we an so me if up do no us go am oh hi ex ah ha uh um "
                  "eh ow ox ax ye lo aw yo ho pa ma".split())
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


def read_sentences(path: str | Path) -> list[str]:
    """Non-empty normalised lines of a text file."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    return [s for s in map(normalize_text, lines) if s]


# -- vocabulary


def _usable(word: str) -> bool:
    if not _WORD.fullmatch(word) or not re.search(r"[aeiouy]", word):
        return False  # vowel-less words are spelled letter by letter
    return len(word) > 2 or word in _TWO_LETTER or word in ("a", "i")


@functools.lru_cache(maxsize=4)
def load_vocabulary(limit: int | None = None) -> tuple[tuple[str, ...], str]:
    """The `limit` (default BROAD_VOCAB) most common usable English words, most common first, and their source.

    Ranked by wordfreq when installed, kept to lowercase entries of /usr/share/dict/words when present
    (drops names, abbreviations and web slang). Without wordfreq the dictionary is unranked (short words first).
    """
    limit = limit or BROAD_VOCAB
    dictionary = None
    if DICT_WORDS.is_file():
        dictionary = {w for w in DICT_WORDS.read_text(encoding="utf-8", errors="replace").split() if _usable(w)}
    try:
        import wordfreq
        from importlib.metadata import version
    except ImportError:
        wordfreq = None
    if wordfreq is not None:
        ranked = [w for w in wordfreq.top_n_list("en", max(4 * limit, 20000)) if _usable(w)]
        if dictionary:
            ranked = [w for w in ranked if w in dictionary]
        source = f"wordfreq {version('wordfreq')}" + (f" & {DICT_WORDS}" if dictionary else "")
        return tuple(ranked[:limit]), source
    if dictionary:
        ranked = sorted((w for w in dictionary if len(w) <= 9 and "'" not in w), key=lambda w: (len(w), w))
        return tuple(ranked[:limit]), f"{DICT_WORDS} (unranked: pip install wordfreq for word frequencies)"
    return (), "none"


# -- sentence generator

NAMES = ("james mary john patricia robert jennifer michael linda david elizabeth william barbara richard susan "
         "joseph jessica thomas sarah charles karen daniel nancy matthew lisa anthony betty mark helen paul sandra "
         "steven ashley andrew emily kevin donna brian michelle george carol edward amanda ronald melissa").split()
MONTHS = "january february march april may june july august september october november december".split()
WEEKDAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
STREETS = "main oak park maple pine cedar elm lake hill church market second third".split()
ROAD_KINDS = "street road avenue lane drive way court place".split()
ROOMS = ("kitchen", "bedroom", "living room", "bathroom", "office", "hallway", "garage", "basement")
DEVICES = ("lights", "heating", "fan", "radio", "television", "music", "alarm", "oven", "air conditioning")
CITIES = ("london", "paris", "boston", "chicago", "denver", "dublin", "glasgow", "seattle", "toronto", "sydney",
          "madrid", "berlin", "atlanta", "houston", "portland", "edinburgh")
TEMPLATES = (
    "please call {name} at {phone}",
    "the meeting is on {date}",
    "the meeting is on {weekday} at {time}",
    "set a timer for {small} minutes",
    "it costs {money}",
    "send {money} to {name}",
    "the train leaves at {time}",
    "my number is {phone}",
    "{name} was born on {date} {year}",
    "{name} lives at {number} {street} street",
    "turn the volume up to {percent} percent",
    "the temperature is {small} degrees",
    "call me back in {small} minutes",
    "there are {number} people on the list",
    "the order number is {code}",
    "add {small} and {small2}",
    "we need {small} tickets for {weekday}",
    "the flight was delayed by {small} hours",
    "remind me on {date} at {time}",
    "the room is on the {ordinal} floor",
)
# More templates for natural-text corpora (training/corpus_text.py); kept apart from TEMPLATES so that
# generate_sentence, and the corpora built with it, stay as they were.
MORE_TEMPLATES = (
    "turn on the {device} in the {room}",
    "turn off the {device} in the {room}",
    "switch the {device} off at {time}",
    "set an alarm for {time} on {weekday}",
    "wake me up at {time} tomorrow",
    "what is the weather in {city} on {weekday}",
    "book a table for {small} at {time}",
    "how far is it to {city}",
    "play the next song",
    "pause the music and call {name}",
    "text {name} that i will be {small} minutes late",
    "the parcel goes to {number} {street} {road}",
    "my address is {number} {street} {road} {city}",
    "her new address is flat {small} {number} {street} {road}",
    "the invoice came to {money}",
    "i paid {money} for two tickets to {city}",
    "the rent goes up to {money} in {month}",
    "prices rose by {percent} percent in {year}",
    "the bus leaves at {time} from stop {small}",
    "we landed in {city} at {time}",
    "the report is due on {date}",
    "the shop closes at {time} on {weekday}s",
    "he was born in {year}",
    "the company was founded in {year}",
    "the match starts at {time} on {date}",
    "i owe {name} {money}",
    "the account number is {code}",
    "the total comes to {money} with tax",
    "there were {number} people at the concert",
    "the bridge is {number} metres long",
    "dial {phone} for help",
    "the appointment is on {weekday} the {ordinal} at {time}",
    "move the meeting to {date} at {time}",
    "we drove {number} miles to {city}",
    "the book costs {money} and the pen {money}",
)


def _fill(template: str, rng: np.random.Generator) -> str:
    def pick(seq):
        return seq[int(rng.integers(len(seq)))]

    slots = {
        "name": lambda: pick(NAMES),
        "phone": lambda: digits_to_words("".join(str(d) for d in rng.integers(0, 10, size=pick((7, 10))))),
        "code": lambda: digits_to_words("".join(str(d) for d in rng.integers(0, 10, size=int(rng.integers(4, 9))))),
        "date": lambda: (f"{pick(MONTHS)} {ordinal_to_words(int(rng.integers(1, 29)))}" if rng.random() < 0.5
                         else f"the {ordinal_to_words(int(rng.integers(1, 29)))} of {pick(MONTHS)}"),
        "year": lambda: year_to_words(int(rng.integers(1900, 2031))),
        "weekday": lambda: pick(WEEKDAYS),
        "time": lambda: time_to_words(int(rng.integers(1, 13)),
                                      pick((0, 0, 5, 10, 15, 20, 30, 45, int(rng.integers(60))))),
        "money": lambda: money_to_words(int(rng.integers(1, 1000)), pick((0, 0, int(rng.integers(100))))),
        "small": lambda: number_to_words(int(rng.integers(2, 60))),
        "small2": lambda: number_to_words(int(rng.integers(2, 60))),
        "number": lambda: number_to_words(int(rng.integers(1, 10000))),
        "percent": lambda: number_to_words(int(rng.integers(1, 21)) * 5),
        "ordinal": lambda: ordinal_to_words(int(rng.integers(1, 40))),
        "street": lambda: pick(STREETS),
        "road": lambda: pick(ROAD_KINDS),
        "room": lambda: pick(ROOMS),
        "device": lambda: pick(DEVICES),
        "city": lambda: pick(CITIES),
        "month": lambda: pick(MONTHS),
    }
    return re.sub(r"\{(\w+)\}", lambda m: slots[m.group(1)](), template)


def fill_template(template: str, rng: np.random.Generator) -> str:
    """A template from TEMPLATES or MORE_TEMPLATES with its {slots} filled and the result normalised."""
    return normalize_text(_fill(template, rng))


def generate_sentence(rng: np.random.Generator, vocab: tuple[str, ...], words: tuple[int, int],
                      template_ratio: float) -> str:
    """A templated sentence (names, numbers, dates spelled out) with probability template_ratio, else
    words[0]..words[1] words drawn from vocab (rank r weighted 1/sqrt(r+1): common words often, rare ones too)."""
    if template_ratio > 0 and rng.random() < template_ratio:
        return normalize_text(_fill(TEMPLATES[int(rng.integers(len(TEMPLATES)))], rng))
    weights = _weights(len(vocab))
    n = int(rng.integers(words[0], words[1] + 1))
    return " ".join(vocab[i] for i in rng.choice(len(vocab), size=n, p=weights))


@functools.lru_cache(maxsize=8)
def _weights(n: int) -> np.ndarray:
    w = 1.0 / np.sqrt(np.arange(1, n + 1))
    return w / w.sum()
