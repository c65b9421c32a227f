#!/usr/bin/env python
"""Real human speech, side by side: Whisper tiny.en (streamed by the server and in-process), base-en and
pocketsphinx; Whisper's runtimes; streaming latency of Whisper vs base-en.

    python bench/real_speech.py [--quick] [--skip-streaming] [--skip-runtimes] [--levels 1,2,4]
        [--out bench/results/real_speech.json]

1. Accuracy (always). Sets: ../shared/data (fsdd test split, takes 0-4 of all 5 speakers, per accent group
   of its speakers.json and pooled; speechbrain_asr_samples without its `text_uncertain` utterance;
   ljspeech_coqui_subset; misc_single_utterances; each skipped with a note when absent) and "ordinary
   English": the sentences of bench/data/ordinary_sentences.txt spoken by espeak-ng en-us and en-gb with
   speaker variants (synthesised once, cached under --workdir). Systems:
   - whisper-tiny-en streamed: `speechadapt serve` on 127.0.0.1 (a free port, an empty model store in a
     temp dir, so the built-in models serve), each file streamed with SpeechClient.stream_file (unpaced,
     one at a time, interim_results off); the transcript is the finals joined; RTF = client wall / audio.
   - whisper-tiny-en in-process: speechadapt.asr.load_model("whisper-tiny-en").transcribe (CTranslate2
     int8, beam 5, --threads), after the server has stopped; RTF = transcribe wall / audio.
   - base-en streamed: the same server, config model "base-en".
   - pocketsphinx: its default en-us model, 3-gram LM and dictionary, one thread, whole utterance
     (bench/streaming.py's pocketsphinx_on); RTF = wall / audio.
   WER and CER after speechadapt.asr.text.normalize_text on both sides (digits spelled out: "7." -> "seven").
   Targets: whisper-tiny-en streamed WER <= 8% on the read sentences (LJ subset + speechbrain samples
   pooled) and <= 20% on the ordinary English espeak-ng set.
2. Runtimes (--skip-runtimes skips): Whisper tiny.en on the read sentences with CTranslate2 int8 (what
   serves), CTranslate2 float32, torch fp32 and torch int8 dynamic quantisation (nn.Linear), --threads
   threads each, the same log-mel windows (zero-padded to the package's min_window_s), greedy; CTranslate2
   also with beam 5 (the served finals). WER, CER, RTF, load seconds (the first load of a CTranslate2 compute
   type converts the package's weights into the cache, ~/.cache/speechadapt/ct2).
3. Streaming latency (--skip-streaming skips): for whisper-tiny-en and base-en, N concurrent clients
   (--levels, default 1,2,4) stream the read sentences (each followed by 1 s of silence) in 100 ms chunks
   at real-time pace with interim_results (bench/streaming.py's paced clients), at least one pass over the
   set per level. First interim after audio start (first chunk sent -> first non-empty result), first
   interim after speech start (minus the speech onset webrtcvad finds in the file), final after the end of
   audio (last chunk sent -> last final, 0 when the endpointer's final came first), p50/p95, errors, WER.
   Targets (whisper, 4 streams, p95): first interim <= 1.5 s after speech starts, final <= 1 s after the
   end of audio, no errors.

Prints markdown tables (progress on stderr) and writes JSON {"created", "command", "settings", "server",
"sets", "accuracy", "findings", "runtimes", "streaming", "targets", "markdown", "machine", "wall_seconds"}
to --out (default bench/results/real_speech.json; --quick: real_speech.quick.json). --quick: 3 utterances
per set, 4 read sentences for the runtimes and the latency levels 1,2 (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import inspect
import json
import math
import os
import shlex
import shutil
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import base_model as bm  # noqa: E402  (real-speech sets, cached espeak-ng sets, machine info)
import streaming as sb  # noqa: E402  (server process, paced clients, latency stats, pocketsphinx)

SENTENCES = REPO / "bench" / "data" / "ordinary_sentences.txt"
ORDINARY_VOICES = ("en-us", "en-gb")
ORDINARY_VARIANTS = ["none", "m3", "f2", "f3"]
ORDINARY_SEED = 2024
WHISPER, BASE = "whisper-tiny-en", "base-en"
SYSTEMS = ("whisper streamed", "whisper in-process", "base-en streamed", "pocketsphinx")
SYSTEM_LABELS = {"whisper streamed": "whisper-tiny-en streamed (server)",
                 "whisper in-process": "whisper-tiny-en in-process",
                 "base-en streamed": "base-en streamed (server)", "pocketsphinx": "pocketsphinx"}
READ = "read sentences (LJ + speechbrain)"
FSDD = "fsdd digits, all speakers"
ORDINARY = "ordinary English (espeak-ng), all"
TARGETS = {"read_wer": 0.08, "ordinary_wer": 0.20, "first_interim_ms": 1500.0, "final_ms": 1000.0, "streams": 4}


# -- pure helpers (unit-tested)


def read_sentence_file(path: Path) -> list[str]:
    """Non-empty lines, '#' comment lines left out."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        s = " ".join(line.split())
        if s and not s.startswith("#"):
            out.append(s)
    return out


def norm(text: str) -> str:
    """What is scored: speechadapt's normalisation (lowercase, numbers spelled out, punctuation dropped)."""
    from speechadapt.asr.text import normalize_text

    return normalize_text(text)


def score(refs: list[str], hyps: list[str]) -> tuple[float | None, float | None]:
    """(WER, CER) over a corpus after normalisation; (None, None) when no reference has words."""
    from speechadapt.asr.evaluation import error_rates

    try:
        return error_rates(list(refs), list(hyps))
    except ValueError:
        return None, None


def metrics(recs: list[dict], audio_s: float, busy_s: float | None) -> dict:
    """A row cell: WER, CER, RTF (busy / audio) and counts, from per-utterance {"ref", "hyp", "error"}."""
    wer, cer = score([r["ref"] for r in recs], [r["hyp"] for r in recs])
    return {"utterances": len(recs), "audio_s": round(audio_s, 2), "wer": wer, "cer": cer,
            "rtf": None if busy_s is None or not audio_s else round(busy_s / audio_s, 4),
            "busy_s": None if busy_s is None else round(busy_s, 3),
            "errors": sum(1 for r in recs if r.get("error")),
            "wrong": sum(1 for r in recs if norm(r["hyp"]) != norm(r["ref"]))}


def pool(cells: list[dict]) -> dict | None:
    """One cell for several sets' cells (their records concatenated, busy and audio time summed)."""
    cells = [c for c in cells if c]
    if not cells:
        return None
    recs = [r for c in cells for r in c["records"]]
    busy = None if any(c.get("busy_s") is None for c in cells) else sum(c["busy_s"] for c in cells)
    out = metrics(recs, sum(c["audio_s"] for c in cells), busy)
    out["records"] = recs
    for k in ("server_cpu_s", "cpu_s"):
        if all(c.get(k) is not None for c in cells):
            out[k] = round(sum(c[k] for c in cells), 3)
    return out


def first_run(flags, run: int) -> int | None:
    """Index of the first `run` consecutive true flags, None when there is no such run."""
    n = 0
    for i, f in enumerate(flags):
        n = n + 1 if f else 0
        if n >= run:
            return i - run + 1
    return None


def subsample(items: list, k: int | None) -> list:
    """At most k items spread evenly over the list (all when k is None)."""
    if k is None or len(items) <= k:
        return list(items)
    step = len(items) / k
    return [items[int(i * step)] for i in range(k)]


def _cell(c: dict | None, key: str = "wer") -> str:
    if not c or c.get(key) is None:
        return "-"
    if key == "rtf":
        return f"{c['rtf']:.3f}"
    return f"{100 * c[key]:.1f}%"


def accuracy_table(rows: list[dict], systems=SYSTEMS) -> str:
    """Markdown: one row per set, "WER (CER)" per system."""
    head = "| set | utts | audio min | " + " | ".join(f"{SYSTEM_LABELS.get(s, s)} WER (CER)" for s in systems) + " |"
    lines = [head, "| --- | ---: | ---: |" + " ---: |" * len(systems)]
    for r in rows:
        if r.get("utterances") is None:
            lines.append(f"| {r['set']} | - | - |" + " - |" * len(systems))
            continue
        cells = []
        for s in systems:
            c = r["systems"].get(s)
            cells.append("-" if not c or c.get("wer") is None else f"{_cell(c)} ({_cell(c, 'cer')})")
        name = f"**{r['set']}**" if r.get("kind") == "pooled" else r["set"]
        lines.append(f"| {name} | {r['utterances']} | {r['audio_s'] / 60:.2f} | " + " | ".join(cells) + " |")
    notes = [f"- {r['set']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines + ([""] + notes if notes else []))


def rtf_table(rows: list[dict], systems=SYSTEMS) -> str:
    """Markdown: real-time factor (wall time / audio time) per system and set."""
    lines = ["| set | " + " | ".join(f"{SYSTEM_LABELS.get(s, s)} RTF" for s in systems) + " |",
             "| --- |" + " ---: |" * len(systems)]
    for r in rows:
        if r.get("utterances") is None:
            continue
        lines.append(f"| {r['set']} | " + " | ".join(_cell(r["systems"].get(s), "rtf") for s in systems) + " |")
    return "\n".join(lines)


def runtime_table(rows: list[dict]) -> str:
    lines = ["| runtime | decoding | threads | utts | audio min | WER | CER | RTF | load s |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['runtime']} | {r['decoding']} | {r['threads']} | - | - | - | - | - | - |")
            continue
        lines.append(f"| {r['runtime']} | {r['decoding']} | {r['threads']} | {r['utterances']} | "
                     f"{r['audio_s'] / 60:.2f} | {_cell(r)} | {_cell(r, 'cer')} | {_cell(r, 'rtf')} | "
                     f"{r['load_s']:.1f} |")
    notes = [f"- {r['runtime']} ({r['decoding']}): {r['error']}" for r in rows if r.get("error")]
    return "\n".join(lines + ([""] + notes if notes else []))


def _pp(p: dict | None) -> str:
    return "-" if not p else f"{p['p50']:.0f} / {p['p95']:.0f}"


def latency_table(levels: list[dict]) -> str:
    lines = ["| model | streams | ok / measured | errors | first interim after audio start ms p50 / p95 | "
             "first interim after speech start ms p50 / p95 | final after end of audio ms p50 / p95 | "
             "finals before end | end of speech -> final ms p50 / p95 | server CPU % | WER |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for lv in levels:
        codes = ", ".join(f"{k} {v}" for k, v in (lv.get("error_codes") or {}).items())
        cpu = "-" if lv.get("server_cpu_pct") is None else f"{lv['server_cpu_pct']:.0f}"
        lines.append(f"| {lv['model']} | {lv['streams']} | {lv['ok']} / {lv['measured']} | {lv['errors']}"
                     f"{f' ({codes})' if codes else ''} | {_pp(lv['first_partial_ms'])} | "
                     f"{_pp(lv['first_interim_after_speech_ms'])} | {_pp(lv['final_ms'])} | "
                     f"{lv['finals_before_eos']} | {_pp(lv.get('speech_end_to_final_ms'))} | {cpu} | {_cell(lv)} |")
    return "\n".join(lines)


def targets(result: dict) -> list[dict]:
    """[{"target", "goal", "measured", "met"}]; met is None when not measured."""
    out = []
    rows = {r["set"]: r for r in (result.get("accuracy") or {}).get("rows", [])}
    for name, key, what in ((READ, "read_wer", "read sentences (LJ + speechbrain)"),
                            (ORDINARY, "ordinary_wer", "ordinary English, espeak-ng en-us + en-gb")):
        c = (rows.get(name) or {}).get("systems", {}).get("whisper streamed")
        wer = None if not c else c.get("wer")
        out.append({"target": f"whisper-tiny-en streamed WER, {what}", "goal": f"<= {100 * TARGETS[key]:.0f}%",
                    "measured": None if wer is None else f"{100 * wer:.1f}%",
                    "met": None if wer is None else wer <= TARGETS[key]})
    levels = (result.get("streaming") or {}).get("levels") or []
    lv = next((x for x in levels if x["model"] == WHISPER and x["streams"] == TARGETS["streams"]), None)
    fi = lv and lv.get("first_interim_after_speech_ms")
    out.append({"target": f"whisper first interim after speech starts, p95 at {TARGETS['streams']} streams",
                "goal": f"<= {TARGETS['first_interim_ms']:.0f} ms", "measured": None if not fi else round(fi["p95"]),
                "met": None if not fi else fi["p95"] <= TARGETS["first_interim_ms"]})
    fm = lv and lv.get("final_ms")
    out.append({"target": f"whisper final after end of audio, p95 at {TARGETS['streams']} streams, no errors",
                "goal": f"<= {TARGETS['final_ms']:.0f} ms", "measured": None if not fm else
                f"{fm['p95']:.0f} ms, {lv['errors']} errors",
                "met": None if not fm else (fm["p95"] <= TARGETS["final_ms"] and lv["errors"] == 0)})
    return out


def result_shape_ok(doc: dict) -> list[str]:
    """What a results document lacks (empty: the shape the README and tests rely on)."""
    problems = [f"missing {k}" for k in ("created", "command", "settings", "sets", "accuracy", "targets",
                                         "markdown", "machine") if k not in doc]
    for r in (doc.get("accuracy") or {}).get("rows", []):
        if r.get("utterances") is None:
            continue
        for s, c in r.get("systems", {}).items():
            if c is not None and not {"wer", "cer", "rtf", "utterances", "audio_s"} <= set(c):
                problems.append(f"accuracy row {r['set']!r}, {s}: incomplete cell")
    for t in doc.get("targets", []):
        if set(t) != {"target", "goal", "measured", "met"}:
            problems.append(f"target {t.get('target')!r}: keys {sorted(t)}")
    return problems


# -- the test sets


@dataclass
class Item:
    name: str
    path: Path
    utt: sb.Utt  # int16 samples at the file's rate (and channels)

    @property
    def text(self) -> str:
        return self.utt.text

    @property
    def seconds(self) -> float:
        return self.utt.seconds


@dataclass
class EvalSet:
    name: str
    kind: str  # "real" or "synthetic"
    items: list[Item]
    note: str = ""
    pool: str | None = None  # the pooled row it belongs to


def load_items(manifest: Path, prefix: str) -> list[Item]:
    rows = bm._read_jsonl(manifest)
    utts = sb.read_manifest_utts(manifest, 0.0, prefix=prefix)
    paths = [Path(r["audio"]) if Path(r["audio"]).is_absolute() else manifest.parent / r["audio"] for r in rows]
    return [Item(u.name, p, u) for u, p in zip(utts, paths)]


def ordinary_sets(workdir: Path, jobs: int) -> list[tuple[str, Path, bool]]:
    """bench/data/ordinary_sentences.txt by each ORDINARY_VOICES voice and ORDINARY_VARIANTS (base_model's cached
    synthesis): [(voice, manifest, was_cached)]."""
    sentences = read_sentence_file(SENTENCES)
    text = bm.TestText(sentences, ORDINARY_SEED, str(SENTENCES.relative_to(REPO)), None, (0, 0), 0, [])
    version = bm._espeak_version()
    return [(v, *bm.synth_set(workdir / "ordinary", v, ORDINARY_VARIANTS, text, bm.TrainingInfo(), jobs, version))
            for v in ORDINARY_VOICES]


def _note(note: str, items: list, args) -> str:
    if args.per_set is not None and len(items) > args.per_set:
        return f"{note}; {args.per_set} of {len(items)} utterances (--per-set)" if note else \
            f"{args.per_set} of {len(items)} utterances (--per-set)"
    return note


def build_sets(args) -> tuple[list[EvalSet], list[dict]]:
    """The evaluation sets (real speech, then ordinary English) and note rows for those missing."""
    sets, missing = [], []
    workdir = Path(args.workdir)
    for s in bm.real_sets(workdir, "test"):
        if s["manifest"] is None:
            missing.append({"set": s["set"], "note": s["note"]})
            continue
        try:
            items = load_items(Path(s["manifest"]), f"{s['set']}/")
        except (OSError, ValueError, KeyError) as e:
            missing.append({"set": s["set"], "note": f"skipped: {type(e).__name__}: {e}"})
            continue
        pool_name = FSDD if s["set"].startswith("fsdd") else (
            READ if s["set"] in ("speechbrain_asr_samples", "ljspeech_coqui_subset") else None)
        sets.append(EvalSet(s["set"], "real", subsample(items, args.per_set), _note(s.get("note", ""), items, args),
                            pool_name))
    try:
        for voice, manifest, cached in ordinary_sets(workdir, args.jobs):
            items = load_items(manifest, f"ordinary-{voice}/")
            note = f"bench/data/ordinary_sentences.txt, variants {', '.join(ORDINARY_VARIANTS)}"
            sets.append(EvalSet(f"ordinary English, espeak-ng {voice}", "synthetic", subsample(items, args.per_set),
                                _note(note, items, args), ORDINARY))
    except (ValueError, RuntimeError, OSError) as e:
        missing.append({"set": "ordinary English (espeak-ng)", "note": f"skipped: {type(e).__name__}: {e}"})
    return sets, missing


def row_order(sets: list[EvalSet]) -> list[tuple[str, str, list[EvalSet]]]:
    """[(row name, kind, member sets)]: each set, and each pool after its last member."""
    out, done = [], set()
    for i, s in enumerate(sets):
        out.append((s.name, s.kind, [s]))
        if s.pool and s.pool not in done and not any(t.pool == s.pool for t in sets[i + 1:]):
            members = [t for t in sets if t.pool == s.pool]
            if len(members) > 1:
                out.append((s.pool, "pooled", members))
            done.add(s.pool)
    return out


# -- systems


def stream_sets(target: str, stats: sb.ProcStats, model: str, sets: list[EvalSet], timeout: float,
                quiet: bool = False) -> dict:
    """Each file through SpeechClient.stream_file (unpaced, one at a time); {set name: cell with records}."""
    from speechadapt.client import SpeechAdaptError, SpeechClient

    out = {}
    with SpeechClient(target, timeout=timeout) as client:
        for s in sets:
            recs, busy, cpu0, served = [], 0.0, stats.cpu_seconds(), set()
            for it in s.items:
                t0, finals, err, n = time.perf_counter(), [], None, 0
                try:
                    for r in client.stream_file(it.path, model=model):
                        if r.is_final:
                            n += 1
                            served.add(r.model)
                            if r.transcript:
                                finals.append(r.transcript)
                except SpeechAdaptError as e:
                    err = f"{e.code}: {e.message[:200]}"
                busy += time.perf_counter() - t0
                recs.append({"utt": it.name, "ref": it.text, "hyp": " ".join(finals), "finals": n, "error": err,
                             "audio_s": round(it.seconds, 3)})
            cpu1 = stats.cpu_seconds()
            cell = metrics(recs, sum(i.seconds for i in s.items), busy)
            cell.update(records=recs, served=sorted(m for m in served if m),
                        server_cpu_s=None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 3))
            out[s.name] = cell
            if not quiet:
                _progress(f"  {model} streamed, {s.name}: WER {bm._pct(cell['wer'])}, RTF {cell['rtf']}, "
                          f"{cell['errors']} errors")
    return out


def inprocess_sets(model, sets: list[EvalSet]) -> dict:
    from speechadapt.asr.audio import load_audio

    out = {}
    if sets and sets[0].items:
        model.transcribe(load_audio(sets[0].items[0].path, model.sample_rate))  # warm-up, not timed
    for s in sets:
        recs, busy = [], 0.0
        for it in s.items:
            x = load_audio(it.path, model.sample_rate)
            t0 = time.perf_counter()
            h = model.transcribe(x)
            busy += time.perf_counter() - t0
            recs.append({"utt": it.name, "ref": it.text, "hyp": h.text, "error": None, "audio_s": round(it.seconds, 3)})
        cell = metrics(recs, sum(i.seconds for i in s.items), busy)
        cell["records"] = recs
        out[s.name] = cell
        _progress(f"  {WHISPER} in-process, {s.name}: WER {bm._pct(cell['wer'])}, RTF {cell['rtf']}")
    return out


def pocketsphinx_sets(sets: list[EvalSet]) -> dict:
    out = {}
    for s in sets:
        r = sb.pocketsphinx_on([it.utt for it in s.items])
        recs = [{"utt": h["utt"], "ref": h["ref"], "hyp": h["hyp"], "error": None,
                 "audio_s": round(it.seconds, 3)} for h, it in zip(r["hyps"], s.items)]
        cell = metrics(recs, r["audio_s"], r["wall_rtf"] * r["audio_s"])
        cell.update(records=recs, cpu_s=round(r["cpu_s_per_audio_s"] * r["audio_s"], 3))
        out[s.name] = cell
        _progress(f"  pocketsphinx, {s.name}: WER {bm._pct(cell['wer'])}, RTF {cell['rtf']}")
    return out


def accuracy_rows(sets: list[EvalSet], missing: list[dict], cells: dict[str, dict]) -> list[dict]:
    """cells: {system: {set name: cell}} -> table rows (sets, pools), records kept per cell."""
    rows = []
    for name, kind, members in row_order(sets):
        systems = {}
        for sysname, by_set in cells.items():
            got = [by_set.get(m.name) for m in members]
            if any(g is None for g in got):
                systems[sysname] = None
            else:
                systems[sysname] = got[0] if len(got) == 1 else pool(got)
        note = members[0].note if kind != "pooled" else ""
        rows.append({"set": name, "kind": kind, "utterances": sum(len(m.items) for m in members),
                     "audio_s": round(sum(i.seconds for m in members for i in m.items), 2),
                     "members": [m.name for m in members], "note": note, "systems": systems})
    rows += [{"set": m["set"], "kind": "note", "utterances": None, "note": m["note"], "systems": {}} for m in missing]
    return rows


def findings(rows: list[dict], limit: int = 12) -> dict:
    """Whisper's wrong transcripts, streamed vs in-process disagreements, and likely hallucinations."""
    base_rows = [r for r in rows if r["kind"] in ("real", "synthetic")]
    wrong, differ, halluc = [], [], []
    for r in base_rows:
        st = (r["systems"].get("whisper streamed") or {}).get("records") or []
        ip = {x["utt"]: x for x in (r["systems"].get("whisper in-process") or {}).get("records") or []}
        for x in st:
            ref, hyp = norm(x["ref"]), norm(x["hyp"])
            if hyp != ref:
                wrong.append({"set": r["set"], "utt": x["utt"], "ref": x["ref"], "hyp": x["hyp"],
                              "finals": x.get("finals"), "error": x.get("error")})
                extra = len(hyp.split()) - len(ref.split())
                if hyp and (extra >= 2 or (len(ref.split()) <= 2 and not set(hyp.split()) & set(ref.split()))):
                    halluc.append(wrong[-1])
            other = ip.get(x["utt"])
            if other is not None and norm(other["hyp"]) != hyp:
                differ.append({"set": r["set"], "utt": x["utt"], "ref": x["ref"], "streamed": x["hyp"],
                               "in_process": other["hyp"]})
    empty = [w for w in wrong if not norm(w["hyp"])]
    return {"whisper_streamed_wrong": len(wrong), "whisper_streamed_empty": len(empty),
            "whisper_streamed_hallucination_like": len(halluc), "streamed_vs_in_process_differ": len(differ),
            "examples_wrong": wrong[:limit], "examples_empty": empty[:limit], "examples_hallucination": halluc[:limit],
            "examples_differ": differ[:limit]}


def findings_text(f: dict) -> str:
    lines = [f"whisper-tiny-en streamed: {f['whisper_streamed_wrong']} utterances wrong, "
             f"{f['whisper_streamed_empty']} empty, {f['whisper_streamed_hallucination_like']} hallucination-like "
             f"(words not in a short reference, or 2+ extra words); streamed and in-process differ on "
             f"{f['streamed_vs_in_process_differ']}."]
    for title, key in (("hallucination-like", "examples_hallucination"), ("empty", "examples_empty"),
                       ("wrong", "examples_wrong")):
        if f[key]:
            lines.append(f"- {title}:")
            lines += [f"  - {w['utt']}: ref {norm(w['ref'])!r} -> {w['hyp']!r}" for w in f[key][:8]]
    if f["examples_differ"]:
        lines.append("- streamed vs in-process:")
        lines += [f"  - {d['utt']}: ref {norm(d['ref'])!r}; streamed {d['streamed']!r}; in-process {d['in_process']!r}"
                  for d in f["examples_differ"][:8]]
    return "\n".join(lines)


# -- runtimes


class TorchWhisper:
    """Greedy decoding with the torch model (build_torch + a plain loop), on the same log-mel windows
    as CTranslate2: the encoder takes the first T positions, so a window shorter than 30 s works as in
    CTranslate2 (transformers' own encoder insists on 30 s)."""

    def __init__(self, ct2_model, quantize: bool = False):
        import torch

        from speechadapt.asr.whisper import build_torch, load_state

        self.m = ct2_model
        net = build_torch(ct2_model.card.hparams, load_state(ct2_model.folder))
        if quantize:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                net = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
        self.net = net.eval()
        hp = ct2_model.card.hparams
        eot = ct2_model.eot
        self.suppress = torch.tensor(sorted(set(hp.get("suppress_tokens") or []) |
                                            set(range(eot + 1, hp.get("vocab_size", eot + 1)))), dtype=torch.long)
        self.begin = torch.tensor(hp.get("begin_suppress_tokens") or [], dtype=torch.long)
        params = inspect.signature(self.net.model.decoder.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def transcribe(self, samples: np.ndarray) -> str:
        import torch
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        from speechadapt.asr.whisper import SAMPLE_RATE, window_frames

        m = self.m
        frames = window_frames(len(samples) / SAMPLE_RATE, m.decoding)
        feats = torch.from_numpy(m.mel(samples, frames)[None])
        enc, dec = self.net.model.encoder, self.net.model.decoder
        with torch.inference_mode():
            x = torch.nn.functional.gelu(enc.conv1(feats))
            x = torch.nn.functional.gelu(enc.conv2(x)).permute(0, 2, 1)
            x = x + enc.embed_positions.weight[: x.shape[1]]
            for layer in enc.layers:
                x = layer(x, None)
            x = enc.layer_norm(x)
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            ids, out = torch.tensor([m.start]), []
            for step in range(448 - len(m.start)):
                h = dec(input_ids=ids, encoder_hidden_states=x, use_cache=True, **{self.cache_kw: cache})
                logits = self.net.proj_out(h.last_hidden_state[:, -1])[0]
                logits[self.suppress] = -float("inf")
                if step == 0 and len(self.begin):
                    logits[self.begin] = -float("inf")
                t = int(logits.argmax())
                if t == m.eot:
                    break
                out.append(t)
                ids = torch.tensor([[t]])
        return m.tokenizer.decode(out).strip()


def runtime_part(args, items: list[Item]) -> list[dict]:
    import torch

    from speechadapt.asr import load_model
    from speechadapt.asr.audio import load_audio
    from speechadapt.asr.whisper import WhisperModel

    torch.set_num_threads(args.threads)
    audio = [load_audio(it.path, 16000) for it in items]
    refs = [it.text for it in items]
    t0 = time.perf_counter()
    base = load_model(WHISPER, threads=args.threads)
    base_load_s = time.perf_counter() - t0
    rows = []

    def ct2(compute_type):
        card = dataclasses.replace(base.card, decoding={**base.card.decoding, "compute_type": compute_type})
        return WhisperModel(card, base.folder, base.ref, args.threads)

    def run(runtime, decoding, make, decode, load_s=None):
        t0 = time.perf_counter()
        try:
            model = make()
        except Exception as e:  # noqa: BLE001 - one runtime failing must not end the benchmark
            rows.append({"runtime": runtime, "decoding": decoding, "threads": args.threads,
                         "error": f"{type(e).__name__}: {e}"})
            _progress(f"  {runtime} ({decoding}): failed: {e}")
            return
        load_s = time.perf_counter() - t0 if load_s is None else load_s
        decode(model, audio[0])  # warm-up, not timed
        hyps, busy = [], 0.0
        for x in audio:
            t = time.perf_counter()
            hyps.append(decode(model, x))
            busy += time.perf_counter() - t
        recs = [{"utt": it.name, "ref": r, "hyp": h} for it, r, h in zip(items, refs, hyps)]
        cell = metrics(recs, sum(len(x) for x in audio) / 16000, busy)
        rows.append({"runtime": runtime, "decoding": decoding, "threads": args.threads, "load_s": round(load_s, 2),
                     **cell, "records": recs})
        _progress(f"  {runtime} ({decoding}): WER {bm._pct(cell['wer'])}, RTF {cell['rtf']}")

    def greedy(model, x):
        return model.generate([x], [None], beam_size=1)[0][0].text

    def beam(model, x):
        return model.transcribe(x).text

    run("CTranslate2 int8 (serves)", "greedy (interim results)", lambda: base, greedy, load_s=base_load_s)
    run("CTranslate2 int8 (serves)", "beam 5 (finals)", lambda: base, beam)
    f32 = {}
    run("CTranslate2 float32", "greedy", lambda: f32.setdefault("m", ct2("float32")), greedy)
    if "m" in f32:
        run("CTranslate2 float32", "beam 5", lambda: f32["m"], beam)
    run("torch fp32", "greedy", lambda: TorchWhisper(base), lambda m, x: m.transcribe(x))
    run("torch int8 dynamic (nn.Linear)", "greedy", lambda: TorchWhisper(base, quantize=True),
        lambda m, x: m.transcribe(x))
    return rows


# -- streaming latency


def speech_onset(utt: sb.Utt, aggressiveness: int = 2, run: int = 3) -> float | None:
    """Seconds to the first `run` consecutive 30 ms frames webrtcvad calls speech (None: none found)."""
    import webrtcvad

    from speechadapt.asr.audio import downmix, resample

    x = resample(downmix(utt.speech().astype(np.float32) / 32768), utt.rate, 16000)
    pcm = np.round(np.clip(x, -1, 32767 / 32768) * 32768).astype("<i2")
    vad, frame = webrtcvad.Vad(aggressiveness), 480
    flags = [vad.is_speech(pcm[i: i + frame].tobytes(), 16000) for i in range(0, len(pcm) - frame + 1, frame)]
    i = first_run(flags, run)
    return None if i is None else i * frame / 16000


async def latency_part(args, target: str, stats: sb.ProcStats, utts: list[sb.Utt]) -> list[dict]:
    onset = {u.name: speech_onset(u) for u in utts}
    levels = []
    for model in (WHISPER, BASE):
        for n in args.levels:
            rounds = max(1, math.ceil(len(utts) / n))
            load = bm._loadavg()
            recs, meter = await sb.run_clients(target, stats, sb.assign(utts, n, rounds, offset=3 * n), paced=True,
                                               interim=True, chunk_ms=100.0, stagger_s=1.0,
                                               timeout_pad=args.timeout, model=model)
            for r in recs:
                on = onset.get(r["utt"])
                r["speech_onset_s"] = on
                r["first_interim_after_speech_s"] = (None if r["first_partial_s"] is None or on is None
                                                     else round(r["first_partial_s"] - on, 4))
            s = sb.summarize(recs)
            lv = {"model": model, "streams": n, "rounds": rounds, **s, **meter, "loadavg": load,
                  "first_interim_after_speech_ms": sb.percentiles(
                      [r["first_interim_after_speech_s"] * 1000 for r in recs
                       if r["ok"] and r["first_interim_after_speech_s"] is not None]),
                  "records": [{**{k: r[k] for k in sb.TIMING_KEYS if k in r}, "speech_onset_s": r["speech_onset_s"],
                               "first_interim_after_speech_s": r["first_interim_after_speech_s"],
                               "ref": r["text"], "hyp": r["hyp"]} for r in recs]}
            levels.append(lv)
            fp, fm = lv["first_interim_after_speech_ms"], lv["final_ms"]
            _progress(f"  latency {model}, {n} streams: {lv['ok']}/{lv['measured']} ok, first interim after speech "
                      f"p95 {sb._ms(fp and fp['p95'])} ms, final p95 {sb._ms(fm and fm['p95'])} ms, WER "
                      f"{bm._pct(lv['wer'])}, server CPU {lv['server_cpu_pct']}%, load {load}")
            await asyncio.sleep(1.0)
    return levels


# -- main


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 3 utterances per set, 4 for the runtimes, latency levels 1,2")
    p.add_argument("--skip-streaming", action="store_true", help="skip the streaming latency part")
    p.add_argument("--skip-runtimes", action="store_true", help="skip the Whisper runtime comparison")
    p.add_argument("--levels", type=lambda s: sb.parse_ints(s, "--levels"), default=None, metavar="N,N,...",
                   help="concurrent real-time streams per latency level (default: 1,2,4; --quick: 1,2)")
    p.add_argument("--per-set", type=int, default=None, metavar="N",
                   help="at most N utterances per set, spread over it (default: all; --quick: 3)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads of the in-process decoders (CTranslate2 intra_threads, torch; default: 2)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="per-stream timeout (default: 120)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra `speechadapt serve` argument, repeatable")
    p.add_argument("--workdir", default=str(REPO / ".cache" / "bench"), metavar="DIR",
                   help="synthesised sets, real-speech manifests, the server log (default: .cache/bench)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="synthesis processes (default: 2)")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="JSON results (default: bench/results/real_speech.json; --quick: real_speech.quick.json)")
    args = p.parse_args(argv)
    if args.levels is None:
        args.levels = [1, 2] if args.quick else [1, 2, 4]
    if args.per_set is None and args.quick:
        args.per_set = 3
    if args.per_set is not None and args.per_set < 1:
        p.error("--per-set must be at least 1")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    if args.out is None:
        args.out = str(REPO / "bench" / "results" / ("real_speech.quick.json" if args.quick else "real_speech.json"))
    return args


def _interrupt(signum, frame):
    raise SystemExit(128 + signum)


def report(result: dict) -> str:
    parts = ["### Accuracy on real and ordinary speech", "", accuracy_table(result["accuracy"]["rows"]), "",
             "Real-time factor (wall time / audio time; the server's rows: client wall, unpaced, one file at a time):",
             "", rtf_table(result["accuracy"]["rows"]), ""]
    if result.get("findings"):
        parts += ["### What Whisper gets wrong", "", findings_text(result["findings"]), ""]
    if result.get("runtimes"):
        parts += ["### Whisper tiny.en runtimes (read sentences)", "", runtime_table(result["runtimes"]["rows"]), ""]
    if result.get("streaming"):
        parts += ["### Streaming latency at real-time pace (read sentences + 1 s silence, 100 ms chunks)", "",
                  latency_table(result["streaming"]["levels"]), ""]
    parts += ["### Targets", "", sb.targets_table(result["targets"]), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    started, load_start = time.monotonic(), bm._loadavg()
    import torch

    torch.set_num_threads(1)  # this process while the server works: clients and pocketsphinx
    _progress("building the test sets (real speech from ../shared/data, ordinary English by espeak-ng)...")
    sets, missing = build_sets(args)
    if not sets:
        print("error: no test set available", file=sys.stderr)
        return 2
    for s in sets:
        _progress(f"  {s.name}: {len(s.items)} utterances, {sum(i.seconds for i in s.items) / 60:.2f} min")
    read_items = [it for s in sets if s.pool == READ for it in s.items]

    tmp = Path(tempfile.mkdtemp(prefix="real-speech-"))
    store = tmp / "store"  # the server keeps job state beside it (store-state): both go at the end
    store.mkdir()
    server = sb.ServerProcess(store, args.server_arg, Path(args.workdir) / "real-speech-server.log")
    server_info = {"command": shlex.join(server.command), "log": str(server.log), "code": sb.code_version(),
                   "model_store": "empty temp dir (built-in models)"}
    cells: dict[str, dict] = {}
    streaming = None
    try:
        _progress("starting the server...")
        target = server.start()
        stats = sb.ProcStats(server.proc.pid)
        server_info.update(address=target, pid=server.proc.pid)
        _progress(f"server on {target} (pid {server.proc.pid}); warming up both models")
        warm = sets[0].items[:1]
        for model in (WHISPER, BASE):
            got = stream_sets(target, stats, model, [EvalSet("warm-up", "real", warm)], args.timeout, quiet=True)
            if got["warm-up"]["errors"]:
                raise RuntimeError(f"{model} fails on the server: {got['warm-up']['records'][0]['error']}")
        _progress(f"accuracy: {WHISPER} streamed through the server")
        cells["whisper streamed"] = stream_sets(target, stats, WHISPER, sets, args.timeout)
        _progress(f"accuracy: {BASE} streamed through the server")
        cells["base-en streamed"] = stream_sets(target, stats, BASE, sets, args.timeout)
        if not args.skip_streaming and read_items:
            _progress(f"streaming latency: levels {args.levels}, {len(read_items)} read sentences + 1 s silence, "
                      "real-time pace")
            utts = [dataclasses.replace(it.utt, samples=sb._pad(it.utt.samples, it.utt.rate, 1.0),
                                        speech_frames=len(it.utt.samples)) for it in read_items]
            levels = asyncio.run(latency_part(args, target, stats, utts))
            streaming = {"levels": levels, "utterances": len(utts), "trailing_silence_s": 1.0, "chunk_ms": 100,
                         "definitions": {
                             "first_partial_ms": "first audio chunk sent -> first non-empty result received",
                             "first_interim_after_speech_ms": "the same minus the speech onset webrtcvad "
                                                              "(aggressiveness 2, 3 x 30 ms frames) finds in the file",
                             "final_ms": "last audio chunk sent (then half-close) -> last final; 0 when the "
                                         "endpointer's final came first (finals_before_eos)"}}
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    torch.set_num_threads(args.threads)
    from speechadapt.asr import load_model
    from speechadapt.asr.importers import ensure_default_whisper

    ensure_default_whisper()
    _progress(f"accuracy: {WHISPER} in-process ({args.threads} threads)")
    whisper = load_model(WHISPER, threads=args.threads)
    whisper_info = {"model": whisper.name, "path": str(whisper.folder), "decoding": whisper.decoding.to_dict()}
    cells["whisper in-process"] = inprocess_sets(whisper, sets)
    del whisper
    _progress("accuracy: pocketsphinx")
    ps_info = sb.pocketsphinx_info()
    if "error" not in ps_info:
        cells["pocketsphinx"] = pocketsphinx_sets(sets)
    else:
        missing.append({"set": "pocketsphinx", "note": f"unavailable: {ps_info['error']}"})
    cells = {k: cells[k] for k in SYSTEMS if k in cells}
    rows = accuracy_rows(sets, missing, cells)
    result: dict = {"accuracy": {"systems": {k: SYSTEM_LABELS[k] for k in cells}, "rows": rows,
                                 "whisper": whisper_info, "pocketsphinx": ps_info}}
    result["findings"] = findings(rows)

    if not args.skip_runtimes and read_items:
        runtime_items = read_items[:4] if args.quick else read_items
        _progress(f"runtimes: Whisper tiny.en on {len(runtime_items)} read sentences, {args.threads} threads")
        result["runtimes"] = {"rows": runtime_part(args, runtime_items), "utterances": len(runtime_items),
                              "note": "the same log-mel windows for every runtime (zero-padded to min_window_s); "
                                      "the torch loop has no no-speech check"}
    if streaming:
        result["streaming"] = streaming
    result["targets"] = targets(result)
    result["markdown"] = report(result)
    print()
    print(result["markdown"])

    machine = bm.machine_info("cpu")
    machine.update(loadavg_start=load_start, loadavg_end=bm._loadavg())
    doc = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None
        else shlex.join(["python", "bench/real_speech.py", *argv]),
        "settings": vars(args),
        "server": server_info,
        "sets": [{"set": s.name, "kind": s.kind, "utterances": len(s.items),
                  "audio_s": round(sum(i.seconds for i in s.items), 2), "pool": s.pool, "note": s.note}
                 for s in sets] + [{"set": m["set"], "kind": "note", "note": m["note"]} for m in missing],
        **result,
        "machine": machine,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(f"wrote {out} ({doc['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
