"""Word n-gram language models: counting, interpolated modified Kneser-Ney, ARPA files.

Pure Python (no torch): the light client builds LMs with it (`speechadapt lm build`).

The estimator follows Chen & Goodman (1998) as KenLM's lmplz does:

- the highest order uses raw counts; lower orders use continuation counts N1+(. w) (how many distinct
  words precede), except n-grams that start with `<s>`, which nothing can precede: they keep raw counts;
- each order has three discounts D1, D2, D3+ from its counts-of-counts (n1..n4 of the adjusted counts),
  D_k = k - (k+1) Y n_{k+1}/n_k with Y = n1 / (n1 + 2 n2); where a count-of-count is zero or a discount
  falls outside (0, k), lmplz's --discount_fallback values 0.5, 1.0, 1.5 are used;
- p(w | h) = (a(hw) - D(a(hw))) / sum_v a(hv) + gamma(h) p(w | h'), gamma(h) = (D1 N1(h.) + D2 N2(h.)
  + D3 N3+(h.)) / sum_v a(hv), and unigrams interpolate with the uniform distribution over the vocabulary
  (every word but `<s>`, so `<unk>` and words never seen in the text get gamma() / |V|).

An ARPA file lists p(w | h) for every n-gram seen and log10 gamma(h) as the backoff weight of h, so that
p(w | h) for an unlisted hw is backoff(h) p(w | h'). Pruning (`prune[n]`: drop n-grams of order n >= 2 whose
adjusted count is at most that) keeps the contexts and suffixes of kept n-grams and renormalises the
backoff weights so that every context's distribution still sums to 1.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
NO_PROB = -99.0  # log10 "probability" of <s>, as KenLM writes it

Gram = tuple[str, ...]


@dataclass(frozen=True)
class NgramModel:
    """An estimated model: per order, {n-gram: (log10 p, log10 backoff or None)}, and what it came from."""

    order: int
    grams: tuple[dict[Gram, tuple[float, float | None]], ...]  # grams[n - 1]: n-grams of order n
    discounts: tuple[tuple[float, float, float], ...]  # per order
    fallback_orders: tuple[int, ...]  # orders whose discounts are the fallback values

    @property
    def counts(self) -> dict[int, int]:
        return {n + 1: len(g) for n, g in enumerate(self.grams)}

    def logprob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 p(word | context) under the ARPA backoff semantics (context: the preceding words, oldest first)."""
        ctx = tuple(context)[-(self.order - 1):] if self.order > 1 else ()
        if (word,) not in self.grams[0]:
            word = UNK
        backoff = 0.0
        while True:
            hit = self.grams[len(ctx)].get((*ctx, word))
            if hit is not None:
                return hit[0] + backoff
            if not ctx:  # an unknown word in a model without <unk> cannot happen: <unk> is always listed
                raise KeyError(word)
            bo = self.grams[len(ctx) - 1].get(ctx)
            backoff += bo[1] if bo is not None and bo[1] is not None else 0.0
            ctx = ctx[1:]

    def write_arpa(self, path: str | Path) -> None:
        """The ARPA text format with TAB separators (flashlight's KenLM requires them)."""
        with open(path, "w", encoding="utf-8") as f:
            f.write("\\data\\\n")
            for n, grams in enumerate(self.grams, 1):
                f.write(f"ngram {n}={len(grams)}\n")
            for n, grams in enumerate(self.grams, 1):
                f.write(f"\n\\{n}-grams:\n")
                for gram in sorted(grams):
                    lp, bo = grams[gram]
                    line = f"{lp:.6f}\t{' '.join(gram)}"
                    if bo is not None and n < self.order:
                        line += f"\t{bo:.6f}"
                    f.write(line + "\n")
            f.write("\n\\end\\\n")


def count_ngrams(sentences: Iterable[Sequence[str]], order: int) -> list[dict[Gram, int]]:
    """Raw counts of every n-gram of orders 1..order in `<s> sentence </s>`."""
    if order < 1:
        raise ValueError(f"order must be at least 1, got {order}")
    counts: list[dict[Gram, int]] = [defaultdict(int) for _ in range(order)]
    for words in sentences:
        padded = (BOS, *words, EOS)
        for i in range(len(padded)):
            for n in range(1, min(order, i + 1) + 1):
                counts[n - 1][padded[i - n + 1: i + 1]] += 1
    return [dict(c) for c in counts]


def adjusted_counts(raw: list[dict[Gram, int]]) -> list[dict[Gram, int]]:
    """Kneser-Ney counts: raw at the highest order and for n-grams starting with <s>; else N1+(. gram)."""
    order = len(raw)
    adjusted = [dict() for _ in range(order)]
    adjusted[-1] = dict(raw[-1])
    for n in range(order - 1, 0, -1):  # n: the order being filled (1-based), from the order above
        left = defaultdict(int)
        for gram in adjusted[n]:
            left[gram[1:]] += 1
        adjusted[n - 1] = {g: (c if g[0] == BOS else left[g]) for g, c in raw[n - 1].items()}
    return adjusted


def discounts(counts: Iterable[int]) -> tuple[tuple[float, float, float], bool]:
    """(D1, D2, D3+) from one order's adjusted counts, and whether the fallback was used."""
    n = [0] * 5
    for c in counts:
        if c <= 4:
            n[c] += 1
    if all(n[1:5]):
        y = n[1] / (n[1] + 2 * n[2])
        d = tuple(k - (k + 1) * y * n[k + 1] / n[k] for k in (1, 2, 3))
        if all(0 < d[k - 1] < k for k in (1, 2, 3)):
            return d, False
    return FALLBACK_DISCOUNTS, True


def estimate(sentences: Iterable[Sequence[str]], order: int, vocabulary: Iterable[str] = (),
             prune: Sequence[int] = ()) -> NgramModel:
    """Interpolated modified Kneser-Ney from tokenised sentences.

    `vocabulary`: words to list as unigrams even where the text never has them (they get gamma() / |V|).
    `prune`: thresholds per order from 1 (lmplz's --prune: the first must be 0, the last repeats)."""
    prune = list(prune) or [0]
    if prune[0] != 0:
        raise ValueError("unigrams cannot be pruned: the first --prune threshold must be 0")
    if any(b < a for a, b in zip(prune, prune[1:])) or any(t < 0 for t in prune):
        raise ValueError(f"--prune thresholds must be non-negative and non-decreasing, got {prune}")
    thresholds = [prune[min(i, len(prune) - 1)] for i in range(order)]

    raw = count_ngrams(sentences, order)
    if not raw[0].get((EOS,)):
        raise ValueError("no sentences to estimate a language model from")
    adjusted = adjusted_counts(raw)
    ds, fallback = [], []
    for n in range(order):
        d, fell = discounts(c for g, c in adjusted[n].items() if g != (BOS,))
        ds.append(d)
        if fell:
            fallback.append(n + 1)

    def discount(n: int, c: int) -> float:
        return ds[n][min(c, 3) - 1]

    # per-context statistics at each order: sum of counts and gamma
    totals: list[dict[Gram, float]] = []
    gammas: list[dict[Gram, float]] = []
    continuations: list[dict[Gram, int]] = []  # how many words follow each context (before pruning)
    for n in range(order):
        tot, mass, conts = defaultdict(float), defaultdict(float), defaultdict(int)
        for gram, c in adjusted[n].items():
            if gram == (BOS,):
                continue
            tot[gram[:-1]] += c
            mass[gram[:-1]] += discount(n, c)
            conts[gram[:-1]] += 1
        totals.append(tot)
        gammas.append({h: mass[h] / t for h, t in tot.items()})
        continuations.append(conts)

    vocab = {g[0] for g in adjusted[0]} | set(vocabulary) | {UNK, EOS}
    vocab.discard(BOS)
    uniform = 1.0 / len(vocab)

    probs: list[dict[Gram, float]] = [dict() for _ in range(order)]
    for w in vocab:
        c = adjusted[0].get((w,), 0)
        seen = (c - discount(0, c)) / totals[0][()] if c else 0.0
        probs[0][(w,)] = seen + gammas[0][()] * uniform
    for n in range(1, order):
        for gram, c in adjusted[n].items():
            h = gram[:-1]
            probs[n][gram] = (c - discount(n, c)) / totals[n][h] + gammas[n][h] * probs[n - 1][gram[1:]]

    # pruning: drop low counts from the top down, keeping what kept n-grams need (their context and suffix)
    kept: list[set[Gram]] = [set(p) for p in probs]
    kept[0].add((BOS,))
    forced: set[Gram] = set()  # contexts and suffixes of kept n-grams
    for n in range(order - 1, 0, -1):
        if thresholds[n]:
            kept[n] = {g for g in kept[n] if adjusted[n][g] > thresholds[n] or g in forced}
        for g in kept[n]:
            forced.add(g[:-1])
            forced.add(g[1:])

    grams: list[dict[Gram, tuple[float, float | None]]] = [dict() for _ in range(order)]
    listed = [defaultdict(list) for _ in range(order)]  # context -> kept continuations, for renormalising
    for n in range(1, order):
        for g in kept[n]:
            listed[n][g[:-1]].append(g)
    for n in range(order):
        for g in kept[n]:
            if g == (BOS,):
                lp = NO_PROB
            else:
                lp = math.log10(probs[n][g])
            bo = None
            if n + 1 < order:
                bo = _backoff(g, n + 1, listed, probs, gammas, continuations)
            grams[n][g] = (lp, bo)
    return NgramModel(order, tuple(grams), tuple(ds), tuple(fallback))


def _backoff(h: Gram, n: int, listed, probs, gammas, continuations) -> float:
    """log10 backoff weight of the (n - 1)-gram h: the mass its order-n continuations leave to order n - 1.
    gamma(h) where none was pruned; else renormalised: (1 - sum of kept p(w | h)) / (1 - sum of their p(w | h'))."""
    if h not in gammas[n]:
        return 0.0
    conts = listed[n].get(h, [])
    if len(conts) == continuations[n][h]:
        g = gammas[n][h]
        return math.log10(g) if g > 0 else NO_PROB
    num = 1.0 - sum(probs[n][g] for g in conts)
    den = 1.0 - sum(probs[n - 1][g[1:]] for g in conts)
    if num <= 0 or den <= 0:
        return NO_PROB if num <= 0 < den else 0.0
    return math.log10(num / den)


def read_arpa(path: str | Path) -> NgramModel:
    """An ARPA file back into an `NgramModel` (for checks and scoring; decoding reads it with KenLM)."""
    grams: list[dict[Gram, tuple[float, float | None]]] = []
    declared: dict[int, int] = {}
    section = None
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line == "\\data\\":
                section = 0
            elif line == "\\end\\":
                break
            elif line.startswith("ngram ") and section == 0:
                n, count = line[6:].split("=")
                declared[int(n)] = int(count)
            elif line.startswith("\\") and line.endswith("-grams:"):
                section = int(line[1:-7])
                while len(grams) < section:
                    grams.append({})
            elif section:
                parts = line.split("\t")
                if len(parts) not in (2, 3):
                    raise ValueError(f"{path}:{lineno}: expected 'logprob<TAB>words[<TAB>backoff]'")
                words = tuple(parts[1].split(" "))
                if len(words) != section:
                    raise ValueError(f"{path}:{lineno}: {len(words)} words in the {section}-grams section")
                grams[section - 1][words] = (float(parts[0]), float(parts[2]) if len(parts) == 3 else None)
    for n, count in declared.items():
        if n > len(grams) or len(grams[n - 1]) != count:
            raise ValueError(f"{path}: header declares {count} {n}-grams, the file lists "
                             f"{len(grams[n - 1]) if n <= len(grams) else 0}")
    if not grams:
        raise ValueError(f"{path} is not an ARPA file: no n-gram sections")
    return NgramModel(len(grams), tuple(grams), (), ())


# -- mixing two models (static linear interpolation, as SRILM's `ngram -mix-lm`) and perplexity


def _prob(model: NgramModel, vocab: set[str], word: str, context: Sequence[str]) -> float:
    """p(word | context) in one model, 0 for a word outside its vocabulary (its <unk> stands for other words)."""
    if word not in vocab and word != UNK:
        return 0.0
    return 10.0 ** model.logprob(word, context)


def mix_arpa(a: NgramModel, b: NgramModel, weight: float) -> NgramModel:
    """One backoff model for weight * p_a + (1 - weight) * p_b.

    Every n-gram listed in either model is listed with the exact mixture of the two models' probabilities (each
    model's own backoff filling what it does not list; a word outside a model's vocabulary has probability 0 there,
    so `<unk>` is mixed as one event); the backoff weight of each context h is then recomputed from the mixed model
    itself, (1 - sum of listed p(w | h)) / (1 - sum of those w's p(w | h')), so that every context's distribution
    sums to 1. Unlisted n-grams are approximated by backing off (as any static mix of backoff models)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"mixing weight must be in [0, 1], got {weight}")
    order = max(a.order, b.order)
    va = {g[0] for g in a.grams[0]} - {BOS}
    vb = {g[0] for g in b.grams[0]} - {BOS}
    grams: list[dict[Gram, tuple[float, float | None]]] = [dict() for _ in range(order)]
    for n in range(order):
        listed = set(a.grams[n] if n < a.order else ()) | set(b.grams[n] if n < b.order else ())
        for g in listed:
            if g == (BOS,):
                grams[n][g] = (NO_PROB, None)
                continue
            w, h = g[-1], g[:-1]
            p = weight * _prob(a, va, w, h) + (1.0 - weight) * _prob(b, vb, w, h)
            grams[n][g] = (math.log10(p) if p > 0 else NO_PROB, None)
    # contexts of order n + 1 exist only where their (n + 1)-gram is listed; ARPA needs every prefix listed too
    for n in range(order - 1, 0, -1):
        for g in list(grams[n]):
            if g[:-1] not in grams[n - 1]:
                w, h = g[-2], g[:-2]
                p = weight * _prob(a, va, w, h) + (1.0 - weight) * _prob(b, vb, w, h)
                grams[n - 1][g[:-1]] = (math.log10(p) if p > 0 else NO_PROB, None)
    continuations: list[dict[Gram, list[Gram]]] = [defaultdict(list) for _ in range(order)]
    for n in range(1, order):
        for g in grams[n]:
            continuations[n][g[:-1]].append(g)
    model = NgramModel(order, tuple(grams), (), ())
    for n in range(order - 1):  # backoffs of contexts of order n + 1, lowest first: each uses only lower orders
        for h in list(grams[n]):
            conts = continuations[n + 1].get(h, [])
            num = 1.0 - sum(10.0 ** grams[n + 1][g][0] for g in conts)
            den = 1.0 - sum(10.0 ** model.logprob(g[-1], h[1:]) for g in conts)
            if num <= 1e-12 or den <= 1e-12:
                bo = NO_PROB if num <= 1e-12 else 0.0
            else:
                bo = math.log10(num / den)
            grams[n][h] = (grams[n][h][0], bo)
    return model


def sentence_logprobs(model: NgramModel, sentences: Iterable[Sequence[str]]) -> list[float]:
    """log10 p of every token of `<s> sentence </s>` after <s> (a word outside the vocabulary scores as <unk>)."""
    out = []
    for words in sentences:
        padded = (BOS, *words, EOS)
        for i in range(1, len(padded)):
            out.append(model.logprob(padded[i], padded[max(0, i - model.order + 1):i]))
    return out


def perplexity(model: NgramModel, sentences: Iterable[Sequence[str]]) -> float:
    lps = sentence_logprobs(model, sentences)
    if not lps:
        raise ValueError("no sentences to measure perplexity on")
    return 10.0 ** (-sum(lps) / len(lps))


def best_mix_weight(a: NgramModel, b: NgramModel, sentences: Sequence[Sequence[str]],
                    weights: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                    bounds: tuple[float, float] = (0.01, 0.99)) -> tuple[float, dict[float, float]]:
    """The weight of `a` with the lowest perplexity of weight * p_a + (1 - weight) * p_b on `sentences`, found by
    EM as SRILM's compute-best-mix does (the log-likelihood is concave in the weight: one optimum), kept within
    `bounds` and rounded to 3 decimals; and the perplexity at each of `weights` and at the chosen one. Tokens outside
    both vocabularies score as each model's <unk>; a word only one model knows has probability 0 in the other."""
    va = {g[0] for g in a.grams[0]} - {BOS}
    vb = {g[0] for g in b.grams[0]} - {BOS}
    pairs = []
    for words in sentences:
        words = [w if w in va or w in vb else UNK for w in words]
        padded = (BOS, *words, EOS)
        for i in range(1, len(padded)):
            ctx = padded[max(0, i - max(a.order, b.order) + 1):i]
            pairs.append((_prob(a, va, padded[i], ctx), _prob(b, vb, padded[i], ctx)))
    if not pairs:
        raise ValueError("no sentences to choose a mixing weight on")

    def ppl(w: float) -> float:
        return 10.0 ** (-sum(math.log10(max(w * pa + (1 - w) * pb, 1e-99)) for pa, pb in pairs) / len(pairs))

    lam = 0.5
    for _ in range(200):  # EM: the new weight is the mean posterior of `a` over the tokens
        new = sum(lam * pa / max(lam * pa + (1 - lam) * pb, 1e-300) for pa, pb in pairs) / len(pairs)
        new = min(max(new, bounds[0]), bounds[1])
        if abs(new - lam) < 1e-5:
            lam = new
            break
        lam = new
    lam = round(lam, 3)
    out = {w: ppl(w) for w in weights}
    out[lam] = ppl(lam)
    return lam, out
