"""CTC beam search: a lexicon of the model's words, n-best lists and phrase boosting.

Runs flashlight-text's decoder through torchaudio. With a lexicon (the words the model was trained
on, `lexicon.txt` in its package) every hypothesis is a sequence of lexicon words, which fixes most
single-letter misspellings of a small character model; without one it searches over characters.

Phrase boosting (Google's `speech_contexts`) is a word-level language model over a trie of phrases:
each word that extends a phrase earns `boost` (natural-log units), a partial phrase that is
abandoned gives its bonus back, and phrase words missing from the lexicon are added for that
request. Without phrases the decoder has no language model and costs nothing extra.

With a word language model (a package's `lm/`, built by `speechadapt lm build`) the search runs over the
LM's broad lexicon (the text's words plus tens of thousands of dictionary words) with KenLM scoring every word
(`lm_weight`, and `lm_word_score` per word). Unknown words: `unk_score` stays -inf by default, so every
hypothesis is a sequence of lexicon words. Flashlight's only way out of the lexicon is an `<unk>` whose spelling
must still be a path of the lexicon's trie (a prefix of some word), so a finite `unk_score` buys truncated words,
not new ones; the broad lexicon is the open vocabulary instead (a word in no list is still forced to its nearest
lexicon words). Phrase boosting on top of an LM runs as one Python LM (KenLM's score times `lm_weight` plus the
phrase bonus): correct, but each word costs a Python call (see README "Language models" for the numbers).
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Iterable, Sequence

import torch

from speechadapt.asr.decoding import Hypothesis, Word
from speechadapt.asr.text import CharTokenizer, normalize_text
from speechadapt.quote import quote

if TYPE_CHECKING:
    from speechadapt.lm import LmFiles

MAX_BOOST = 20.0
DEFAULT_BOOST = 10.0
MAX_PHRASES = 1000
MAX_PHRASE_WORDS = 10


@dataclass(frozen=True)
class BeamConfig:
    beam_size: int = 50
    beam_size_token: int = 12
    beam_threshold: float = 25.0
    word_score: float = 0.0  # per-word insertion bonus (lexicon mode)
    sil_score: float = 0.0
    # with a word language model (lm/ in the package; lm.json's "decoding" overrides these)
    lm_weight: float = 1.0  # weight of KenLM's word scores (log10 probabilities)
    lm_word_score: float = 1.0  # per-word insertion bonus
    unk_score: float | None = None  # None: -inf (no words outside the lexicon; see the module docstring)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BeamConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown beam search options: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class Phrase:
    words: tuple[str, ...]
    boost: float = DEFAULT_BOOST


def parse_phrases(contexts: Iterable[tuple[Sequence[str], float]], tokenizer: CharTokenizer) -> tuple[Phrase, ...]:
    """(phrases, boost) groups -> normalised `Phrase`s. Raises ValueError naming every bad phrase."""
    out, problems = [], []
    for i, (phrases, boost) in enumerate(contexts):
        if boost == 0:
            boost = DEFAULT_BOOST
        if not 0 < boost <= MAX_BOOST:
            problems.append(f"speech_contexts[{i}].boost must be in (0, {MAX_BOOST:g}] (0 = default {DEFAULT_BOOST:g}), got {boost:g}")
            continue
        for j, raw in enumerate(phrases):
            try:
                text = normalize_text(raw)
                tokenizer.encode(text)
            except ValueError as e:
                problems.append(f"speech_contexts[{i}].phrases[{j}] {quote(raw)}: {e}")
                continue
            words = tuple(text.split())
            if not words:
                problems.append(f"speech_contexts[{i}].phrases[{j}] {quote(raw)} has no words")
            elif len(words) > MAX_PHRASE_WORDS:
                problems.append(f"speech_contexts[{i}].phrases[{j}] has {len(words)} words; at most {MAX_PHRASE_WORDS}")
            else:
                out.append(Phrase(words, float(boost)))
    if len(out) > MAX_PHRASES:
        problems.append(f"{len(out)} phrases; at most {MAX_PHRASES} per request")
    if problems:
        raise ValueError("; ".join(problems[:10]) + (f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""))
    return tuple(out)


class _Node:
    __slots__ = ("children", "bonus", "end", "state")

    def __init__(self, bonus: float):
        self.children: dict[int, _Node] = {}
        self.bonus = bonus  # bonus collected from the root to here
        self.end = False
        self.state = None


def _phrase_lm(sequences: list[tuple[list[int], float]]):
    """A flashlight LM over symbol sequences (word ids with a lexicon, token ids without)."""
    from torchaudio.models.decoder import CTCDecoderLM, CTCDecoderLMState

    class PhraseLM(CTCDecoderLM):
        def __init__(self):
            super().__init__()
            self.root = _Node(0.0)
            for symbols, per_symbol in sequences:
                node = self.root
                for s in symbols:
                    nxt = node.children.get(s)
                    if nxt is None:
                        nxt = node.children[s] = _Node(node.bonus + per_symbol)
                    node = nxt
                node.end = True
            self.nodes = {}

        def start(self, start_with_nothing: bool):
            if self.root.state is None:
                self.root.state = CTCDecoderLMState()
                self.nodes[self.root.state] = self.root
            return self.root.state

        def _step(self, node: _Node, symbol: int) -> tuple[_Node, float, _Node]:
            """-> (next node, score gain, its trie parent)."""
            nxt = node.children.get(symbol)
            if nxt is not None:
                gain = nxt.bonus - node.bonus
                if nxt.end and not nxt.children:  # a whole phrase: keep the bonus, start over
                    return self.root, gain, self.root
                return nxt, gain, node
            # off the trie: an unfinished phrase gives its bonus back, then try a fresh start
            refund = 0.0 if node.end else -node.bonus
            fresh = self.root.children.get(symbol)
            if fresh is not None:
                return fresh, refund + fresh.bonus, self.root
            return self.root, refund, self.root

        def score(self, state, symbol: int):
            self.start(False)
            target, gain, parent = self._step(self.nodes[state], symbol)
            if target.state is None:
                target.state = parent.state.child(symbol)
                self.nodes[target.state] = target
            return target.state, gain

        def finish(self, state):
            node = self.nodes[state]
            return self.start(False), (0.0 if node.end or node is self.root else -node.bonus)

    return PhraseLM()


_STDERR = threading.Lock()  # fd 2 is the process's: one KenLM load diverts it at a time
_KENLM_PROGRESS = ("Loading the LM will be faster if you build a binary file", "Reading ", "----5---10---15",
                   "*****")


def model_beam_config(decoding: dict | None, lm: LmFiles | None) -> BeamConfig:
    """A model's beam options: its card's `decoding`, overridden by its word LM's (lm.json) when it has one."""
    return BeamConfig.from_dict({**(decoding or {}), **(lm.decoding if lm is not None else {})})


def load_kenlm(arpa, word_dict):
    """flashlight's KenLM over `arpa`, without the progress bar KenLM's loader writes to the process's stderr
    (it would break `serve --log-format json`, one JSON object per line). File descriptor 2 goes to a temporary
    file while the file loads; whatever other threads wrote there meanwhile is written back afterwards."""
    from flashlight.lib.text.decoder.kenlm import KenLM

    with _STDERR, tempfile.TemporaryFile() as caught:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(caught.fileno(), 2)
        try:
            return KenLM(str(arpa), word_dict)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            other = [line for line in caught.read().decode("utf-8", "replace").splitlines(keepends=True)
                     if line.strip() and not line.startswith(_KENLM_PROGRESS)]
            if other:
                os.write(2, "".join(other).encode())


def _boosted_kenlm(kenlm, lm_weight: float, sequences: list[tuple[list[int], float]]):
    """KenLM (times `lm_weight`) plus phrase boosting, as one flashlight LM. A state is a word history: the
    pair (KenLM state, phrase trie node) is kept per state, and the states are made afresh for each search."""
    from torchaudio.models.decoder import CTCDecoderLM, CTCDecoderLMState

    phrases = _phrase_lm(sequences)

    class BoostedLM(CTCDecoderLM):
        def __init__(self):
            super().__init__()
            self.pairs = {}

        def start(self, start_with_nothing: bool):
            root = CTCDecoderLMState()
            self.pairs = {root: (kenlm.start(start_with_nothing), phrases.root)}
            return root

        def score(self, state, symbol: int):
            ks, node = self.pairs[state]
            ks2, lm_score = kenlm.score(ks, symbol)
            target, gain, _ = phrases._step(node, symbol)
            child = state.child(symbol)
            self.pairs[child] = (ks2, target)
            return child, lm_weight * lm_score + gain

        def finish(self, state):
            ks, node = self.pairs[state]
            _, lm_score = kenlm.finish(ks)
            refund = 0.0 if node.end or node is phrases.root else -node.bonus
            return state, lm_weight * lm_score + refund

    return BoostedLM()


class BeamDecoder:
    """CTC beam search for one model; safe to share between threads (one search at a time per decoder)."""

    def __init__(self, tokenizer: CharTokenizer, lexicon: Sequence[str] | None, cfg: BeamConfig = BeamConfig(),
                 cache_size: int = 16, lm: LmFiles | None = None):
        self.tokenizer, self.cfg, self.lm = tokenizer, cfg, lm
        if lm is not None:  # the LM's broad lexicon, plus any model word it lacks
            lexicon = [*lm.words, *(lexicon or ())]
        self.lexicon = tuple(dict.fromkeys(lexicon)) if lexicon else None
        self._known = frozenset(self.lexicon or ())
        self._lm_search = None  # (word dict, trie, KenLM) over the LM's lexicon, built once
        self._lm_lock = threading.Lock()
        self.tokens = ["-", "|", *tokenizer.tokens[2:]]
        self._cache: OrderedDict[tuple[Phrase, ...], tuple[object, threading.Lock]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    def _build(self, phrases: tuple[Phrase, ...]):
        from flashlight.lib.text.decoder import CriterionType, LexiconDecoderOptions, LexiconFreeDecoderOptions, ZeroLM
        from flashlight.lib.text.dictionary import Dictionary, create_word_dict
        from torchaudio.models.decoder import CTCDecoder

        if self.lm is not None and all(w in self._known for p in phrases for w in p.words):
            return self._lm_decoder(phrases)
        cfg, tokens_dict = self.cfg, Dictionary(self.tokens)
        lm_weight = 1.0
        if self.lexicon is not None:
            words = list(self.lexicon)
            known = set(words)
            words += [w for p in phrases for w in p.words if w not in known and not known.add(w)]
            lexicon = {w: [list(w) + ["|"]] for w in words}
            lexicon["<unk>"] = [["<unk>"]]
            word_dict = create_word_dict(lexicon)
            del lexicon["<unk>"]
            seqs = [([word_dict.get_index(w) for w in p.words], p.boost) for p in phrases]
            word_score, unk_score = cfg.word_score, float("-inf")
            if self.lm is not None:
                word_score = cfg.lm_word_score
                unk_score = float("-inf") if cfg.unk_score is None else cfg.unk_score
                if not phrases:
                    lm_weight = cfg.lm_weight
            options = LexiconDecoderOptions(
                beam_size=cfg.beam_size, beam_size_token=cfg.beam_size_token, beam_threshold=cfg.beam_threshold,
                lm_weight=lm_weight, word_score=word_score, unk_score=unk_score, sil_score=cfg.sil_score,
                log_add=False, criterion_type=CriterionType.CTC,
            )
        else:
            lexicon, word_dict = None, None
            seqs = []
            for p in phrases:
                ids = [tokens_dict.get_index(t) for t in "|".join(p.words)]
                seqs.append((ids, p.boost * len(p.words) / len(ids)))
            options = LexiconFreeDecoderOptions(
                beam_size=cfg.beam_size, beam_size_token=cfg.beam_size_token, beam_threshold=cfg.beam_threshold,
                lm_weight=1.0, sil_score=cfg.sil_score, log_add=False, criterion_type=CriterionType.CTC,
            )
        if self.lm is not None:
            kenlm = load_kenlm(self.lm.arpa, word_dict)  # phrase words beyond the lexicon: a new word order
            lm = _boosted_kenlm(kenlm, cfg.lm_weight, seqs) if phrases else kenlm
        else:
            lm = _phrase_lm(seqs) if phrases else ZeroLM()
        return CTCDecoder(nbest=1, lexicon=lexicon, word_dict=word_dict, tokens_dict=tokens_dict, lm=lm,
                          decoder_options=options, blank_token="-", sil_token="|", unk_word="<unk>")

    def _lm_decoder(self, phrases: tuple[Phrase, ...]):
        """A lexicon decoder with the LM whose lexicon trie (84k words take seconds to insert and smear) is built
        once and shared by every phrase set whose words the lexicon has."""
        from flashlight.lib.text.decoder import CriterionType, LexiconDecoder, LexiconDecoderOptions, SmearingMode, Trie
        from flashlight.lib.text.dictionary import Dictionary, create_word_dict
        from torchaudio.models.decoder import CTCDecoder

        tokens_dict = Dictionary(self.tokens)
        with self._lm_lock:
            if self._lm_search is None:
                lexicon = {w: [list(w) + ["|"]] for w in self.lexicon}
                lexicon["<unk>"] = [["<unk>"]]
                word_dict = create_word_dict(lexicon)
                kenlm = load_kenlm(self.lm.arpa, word_dict)
                trie = Trie(tokens_dict.index_size(), 1)
                start = kenlm.start(False)
                for w in self.lexicon:  # smeared with the unigram scores, as torchaudio does
                    idx = word_dict.get_index(w)
                    trie.insert([tokens_dict.get_index(c) for c in w] + [1], idx, kenlm.score(start, idx)[1])
                trie.smear(SmearingMode.MAX)
                self._lm_search = (word_dict, trie, kenlm)
        word_dict, trie, kenlm = self._lm_search
        cfg = self.cfg
        seqs = [([word_dict.get_index(w) for w in p.words], p.boost) for p in phrases]
        options = LexiconDecoderOptions(
            beam_size=cfg.beam_size, beam_size_token=cfg.beam_size_token, beam_threshold=cfg.beam_threshold,
            lm_weight=1.0 if phrases else cfg.lm_weight, word_score=cfg.lm_word_score,
            unk_score=float("-inf") if cfg.unk_score is None else cfg.unk_score, sil_score=cfg.sil_score,
            log_add=False, criterion_type=CriterionType.CTC,
        )
        lm = _boosted_kenlm(kenlm, cfg.lm_weight, seqs) if phrases else kenlm
        decoder = CTCDecoder.__new__(CTCDecoder)  # torchaudio's wrapper around a decoder we assemble ourselves
        decoder.nbest, decoder.word_dict, decoder.tokens_dict, decoder.blank = 1, word_dict, tokens_dict, 0
        decoder.lm = lm  # keeps a Python LM alive as long as the decoder
        decoder.decoder = LexiconDecoder(options, trie, lm, 1, 0, word_dict.get_index("<unk>"), [], False)
        return decoder

    def memory_bytes(self) -> int:
        """An estimate of what the LM search holds (0 without an LM): the lexicon trie dominates, ~180 bytes
        per spelled character (83,600 words: 135 MB measured), plus KenLM's tables (about the ARPA file's size)."""
        if self.lm is None:
            return 0
        return 180 * sum(len(w) + 1 for w in self.lexicon) + self.lm.arpa.stat().st_size

    def with_config(self, cfg: BeamConfig) -> "BeamDecoder":
        """The same lexicon and LM under other beam options (e.g. LM weights being tuned): the LM search (KenLM
        and the lexicon trie, which the weights do not enter) is shared, not rebuilt."""
        other = BeamDecoder(self.tokenizer, None, cfg, self._cache_size)
        other.lm, other.lexicon, other._known = self.lm, self.lexicon, self._known
        with self._lm_lock:
            other._lm_search = self._lm_search
        return other

    def warm(self) -> None:
        """Build the phrase-free decoder now (with an LM: load the ARPA file and the lexicon trie)."""
        self._decoder(())

    def _decoder(self, phrases: tuple[Phrase, ...]):
        with self._cache_lock:
            hit = self._cache.get(phrases)
            if hit is not None:
                self._cache.move_to_end(phrases)
                return hit
        built = (self._build(phrases), threading.Lock())
        with self._cache_lock:
            self._cache[phrases] = built
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return built

    def decode(self, logits: torch.Tensor, frame_seconds: float, start_frame: int = 0, nbest: int = 1,
               phrases: tuple[Phrase, ...] = ()) -> list[Hypothesis]:
        """logits (T, vocab) of one utterance -> up to `nbest` hypotheses, best first (at least one)."""
        span = (start_frame * frame_seconds, (start_frame + logits.shape[0]) * frame_seconds)
        if logits.shape[0] == 0:
            return [Hypothesis("", (), 0.0, *span)]
        logp = logits.float().log_softmax(-1)
        # a closing word boundary: lexicon spellings end in the separator, which the model need not emit at the end
        boundary = torch.full((1, logp.shape[1]), -1e4)
        boundary[0, 1] = 0.0
        path = torch.cat([logp, boundary]).contiguous()
        decoder, lock = self._decoder(tuple(phrases))
        with lock:
            decoder.nbest = nbest
            results = decoder(path[None])[0]
        hyps = [self._hypothesis(r, logp, frame_seconds, start_frame, span) for r in results]
        return hyps or [Hypothesis("", (), 0.0, *span)]

    def _hypothesis(self, r, logp: torch.Tensor, frame_seconds: float, start_frame: int, span) -> Hypothesis:
        words: list[Word] = []
        letters: list[tuple[int, int]] = []  # (token, frame)

        def close():
            if letters:
                text = "".join(self.tokens[t] for t, _ in letters)
                conf = sum(float(logp[f, t].exp()) for t, f in letters) / len(letters)
                first, last = letters[0][1], letters[-1][1]
                words.append(Word(text, (start_frame + first) * frame_seconds, (start_frame + last + 1) * frame_seconds, conf))
                letters.clear()

        # flashlight's token path has a leading and a trailing silence: path index i is frame i - 1
        for tok, step in zip(r.tokens.tolist(), r.timesteps.tolist()):
            frame = min(max(step - 1, 0), logp.shape[0] - 1)
            if tok == 1:
                close()
            elif tok > 1:
                letters.append((tok, frame))
        close()
        if r.words and len(r.words) == len(words):  # the lexicon's spelling of each word (<unk>: its letters)
            words = [x if w == "<unk>" else Word(w, x.start, x.end, x.confidence) for w, x in zip(r.words, words)]
        conf = sum(w.confidence for w in words) / len(words) if words else 0.0
        return Hypothesis(" ".join(w.word for w in words), tuple(words), conf, *span)
