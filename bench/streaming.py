#!/usr/bin/env python
"""Streaming benchmark: latency, concurrency, throughput and cost per audio second of the gRPC server, and
its WER and CPU cost beside pocketsphinx on the same audio.

    python bench/streaming.py [--streams 1,10,20,40,60] [--quick] [--max-throughput] [--server-arg=--flag=value]
        [--model-store DIR] [--model REF] [--out bench/results/streaming.json]

It starts `speechadapt serve` on 127.0.0.1 (a free port) as a subprocess, with an empty model store by default
(so the shipped base-en serves), and talks to it only over gRPC (speechadapt.client.AsyncSpeechClient, one
channel and TCP connection per simulated client). Parts (`--parts`, default all):

realtime    N concurrent clients (`--streams`) each stream utterances one after another at real-time pace:
            `--chunk-ms` (100 ms) LINEAR16 chunks on a wall-clock schedule, interim_results=true, starts spread
            over `--stagger-s`. At least `--samples` streams are measured per level. Per stream:
            - first partial latency: from sending the first audio chunk to receiving the first result with a
              non-empty transcript (an interim one; a final when none came before). It includes the time the
              words take to be spoken (espeak-ng audio starts with ~0.15 s of silence) and the model's chunk.
            - final latency after the end of audio: from sending the last audio chunk (the client half-closes
              right after it) to receiving the last is_final result. A final that arrived before the end of
              audio (the endpointer fired within the trailing silence) counts as 0 and is counted in
              "finals before end"; every utterance carries `--trailing-silence` (1 s) of silence.
            - end of speech -> final: from sending the chunk that holds the last speech sample to the last
              final: the endpointer's wait (800 ms of trailing non-speech by default) plus any backlog.
            Per level: p50/p95/p99 of each, errors by gRPC code (e.g. RESOURCE_EXHAUSTED from the admission
            limit: counted, never fatal), server CPU% (all threads and children; 100% = one core) and peak RSS,
            the benchmark client's own CPU%, and the WER of the finals (accuracy under load).
            "Real-time capacity": the highest N such that it and every lower tested level has no errors and
            p95 final latency <= `--threshold-ms` (500); `--bisect-steps` more levels are then tried between
            it and the first failing level.
throughput  `--throughput-streams` clients send audio as fast as the server takes it (interim_results=true):
            audio seconds processed per wall second ("x real time"), RTF = wall / audio, server CPU seconds
            per audio second. `--max-throughput` runs only this part.
length      one ~5 s and one ~60 s utterance (`--lengths`; test sentences joined with `--pause-s` pauses,
            endpointing kept from splitting them), each streamed as fast as possible (`--length-reps`) and at
            real-time pace: server wall and CPU time per audio second, and the final latency after the end of
            audio. Cost per audio second should not grow with the utterance's length.
wer         WER and cost of ours (over gRPC, `--wer-streams` concurrent, unpaced, interim_results=false,
            server CPU seconds per audio second) and of pocketsphinx (PyPI, its default en-us acoustic model,
            3-gram LM and dictionary; one thread, in this process after the server has stopped; whole-utterance
            decoding; CPU seconds of its thread per audio second) on the same audio: the synthetic target-domain
            set and the real human speech in ../shared/data (skipped when absent, and with --quick/--no-real).

Target-domain audio: English sentences from the served model's training vocabulary when it had a closed one,
else from the generator's broad one, `--words` (9:20) words each (~3-8 s), or the lines of `--test-text`, spoken in `--voices` (en-us, en-gb) by espeak-ng speaker
variants the model was not trained on (bench/base_model.py's test sets and cache, `--per-voice` each), plus
the trailing silence. The same set serves the latency runs.

Prints markdown tables and writes JSON {"created", "command", "settings", "server", "test_sets", "realtime",
"throughput", "length", "wer", "targets", "machine"} to --out. --quick: a ~2 minute smoke run (levels 1,10,
3 streams each, 5 s vs 20 s as fast as possible only, 3 sentences per voice, no real speech, no bisection).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import base_model as bm  # noqa: E402  (bench/base_model.py: test sets, real speech, machine info)

CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]  # one TCP connection per client, as separate apps
TARGETS = {"streams": 40, "final_p95_ms_at_20": 250.0, "first_partial_ms": 700.0}


# -- small helpers (unit-tested)


def percentiles(values, qs=(50, 95, 99)) -> dict | None:
    """{"p50": .., "p95": .., "p99": .., "n": ..} (linear interpolation), None for no values."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    out = {f"p{q}": float(np.percentile(vals, q)) for q in qs}
    out["n"] = len(vals)
    return out


def level_passes(level: dict, threshold_ms: float) -> bool:
    """A real-time level passes when every stream succeeded and p95 final latency <= threshold."""
    final = level.get("final_ms")
    return (level.get("ok", 0) > 0 and level.get("errors", 0) == 0 and final is not None
            and final["p95"] <= threshold_ms)


def realtime_capacity(levels: list[dict], threshold_ms: float) -> int | None:
    """The highest N whose level and every lower tested level pass; None when even the lowest fails."""
    best = None
    for lv in sorted(levels, key=lambda d: d["streams"]):
        if not level_passes(lv, threshold_ms):
            break
        best = lv["streams"]
    return best


def first_failing_above(levels: list[dict], n: int | None, threshold_ms: float) -> int | None:
    above = sorted(lv["streams"] for lv in levels if (n is None or lv["streams"] > n)
                   and not level_passes(lv, threshold_ms))
    return above[0] if above else None


def bisect_probe(lo: int | None, hi: int | None, tested: set[int]) -> int | None:
    """The next level to try between a passing `lo` and a failing `hi` (None: done, the gap is within ~10%)."""
    if hi is None:
        return None
    lo = lo or 0
    if hi - lo <= max(1, hi // 10):
        return None
    mid = (lo + hi) // 2
    return None if mid in tested or mid <= 0 else mid


def final_latency(t_last_chunk: float, t_last_final: float) -> tuple[float, bool]:
    """(seconds from the end of audio to the last final, clamped at 0; whether the final came first)."""
    delta = t_last_final - t_last_chunk
    return max(0.0, delta), delta < 0


def parse_ints(spec: str, name: str) -> list[int]:
    try:
        vals = sorted({int(v) for v in spec.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name}: a comma list of integers, not {spec!r}") from None
    if not vals or vals[0] < 1:
        raise argparse.ArgumentTypeError(f"{name}: positive integers, not {spec!r}")
    return vals


# -- audio


@dataclass
class Utt:
    name: str
    text: str
    samples: np.ndarray  # int16, (n,) or (n, channels)
    rate: int
    speech_frames: int | None = None  # frames before the added trailing silence (synthetic sets)

    @property
    def channels(self) -> int:
        return 1 if self.samples.ndim == 1 else int(self.samples.shape[1])

    @property
    def seconds(self) -> float:
        return len(self.samples) / self.rate

    def speech(self) -> np.ndarray:
        return self.samples[: self.speech_frames] if self.speech_frames else self.samples


def _pad(samples: np.ndarray, rate: int, seconds: float) -> np.ndarray:
    if seconds <= 0:
        return samples
    shape = (int(round(seconds * rate)),) + samples.shape[1:]
    return np.concatenate([samples, np.zeros(shape, dtype=np.int16)])


def read_manifest_utts(manifest: Path, trailing_s: float = 0.0, prefix: str = "") -> list[Utt]:
    from speechadapt.client.audio import read_audio

    out = []
    base = Path(manifest).parent
    for row in bm._read_jsonl(Path(manifest)):
        path = Path(row["audio"])
        samples, rate = read_audio(path if path.is_absolute() else base / path)
        out.append(Utt(f"{prefix}{path.stem}", str(row.get("text", "")), _pad(samples, rate, trailing_s), rate,
                       len(samples)))
    return out


def joined(utts: list[Utt], seconds: float, pause_s: float, trailing_s: float, name: str) -> tuple[Utt, int]:
    """Sentences (speech only, mono, same rate) joined with pauses until `seconds` long, plus trailing silence."""
    rate = utts[0].rate
    gap = np.zeros(int(round(pause_s * rate)), dtype=np.int16)
    parts, texts, n, i = [], [], 0, 0
    while n < seconds * rate:
        u = utts[i % len(utts)]
        if parts:
            parts.append(gap)
            n += len(gap)
        parts.append(u.speech())
        texts.append(u.text)
        n += len(u.speech())
        i += 1
    speech = np.concatenate(parts)
    return Utt(name, " ".join(texts), _pad(speech, rate, trailing_s), rate, len(speech)), len(texts)


def target_domain_set(args) -> tuple[list[Utt], dict]:
    """The synthetic target-domain sentences (cached by base_model.synth_set), with trailing silence."""
    from speechadapt.asr.package import read_card
    from speechadapt.asr.store import ModelStore

    notes = []
    try:
        ref = ModelStore(args.model_store).resolve(args.model or "base-en")
        info = bm.training_info(read_card(ref.path), ref.path, args.train_summary)
        model_path = str(ref.path)
    except (LookupError, ValueError, OSError) as e:
        info, model_path = bm.TrainingInfo(), None
        notes.append(f"training corpus unknown ({e}); test sentences from the generator's broad vocabulary")
    variants, basis = bm.test_variants(
        info, [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None, 4)
    text = bm.make_text(argparse.Namespace(seed=args.seed, words=args.words, sentence_words=None, vocab_size=None,
                                           test_text=args.test_text), info, args.per_voice)
    utts, sets, version = [], [], bm._espeak_version()
    for voice in args.voices:
        manifest, cached = bm.synth_set(Path(args.workdir), voice, variants, text, info, args.jobs, version)
        vs = read_manifest_utts(manifest, args.trailing_silence, prefix=f"{voice}/")
        utts += vs
        sets.append({"voice": voice, "manifest": str(manifest), "cached": cached, "utterances": len(vs)})
    speech = [u.speech_frames / u.rate for u in utts]
    meta = {"model_path": model_path, "voices": args.voices, "variants": variants, "variant_basis": basis,
            "text": text.as_dict(), "training": info.as_dict(), "sets": sets, "utterances": len(utts),
            "speech_seconds": {"min": round(min(speech), 2), "mean": round(float(np.mean(speech)), 2),
                               "max": round(max(speech), 2)},
            "trailing_silence_s": args.trailing_silence, "notes": notes + info.notes + text.notes}
    return utts, meta


def real_speech_sets(args) -> tuple[list[tuple[str, list[Utt], str]], list[dict]]:
    """[(set name, utts, note)] of ../shared/data (fsdd pooled over its accents), and note rows for the missing."""
    sets: dict[str, tuple[list[Utt], list[str]]] = {}
    missing = []
    for s in bm.real_sets(Path(args.workdir), "test"):
        name = "fsdd digits" if s["set"].startswith("fsdd") else s["set"]
        if s["manifest"] is None:
            missing.append({"set": s["set"], "note": s["note"]})
            continue
        try:
            utts = read_manifest_utts(Path(s["manifest"]), 0.0, prefix=f"{s['set']}/")
        except (OSError, ValueError, KeyError) as e:
            missing.append({"set": s["set"], "note": f"skipped: {type(e).__name__}: {e}"})
            continue
        got = sets.setdefault(name, ([], []))
        got[0].extend(utts)
        if s.get("note"):
            got[1].append(s["note"])
    return [(k, v[0], "; ".join(v[1])) for k, v in sets.items()], missing


# -- the server and its resource use


class ProcStats:
    """CPU seconds (all threads, live and reaped children) and RSS of a process tree: psutil when installed,
    else /proc (Linux)."""

    def __init__(self, pid: int | None):
        self.pid = pid
        try:
            import psutil

            self._ps = psutil.Process(pid) if pid else None
        except ImportError:
            self._ps = None
        self.available = pid is not None and (self._ps is not None or Path(f"/proc/{pid}/stat").exists())

    def _tree(self):
        return [self._ps, *self._ps.children(recursive=True)]

    def cpu_seconds(self) -> float | None:
        if not self.available:
            return None
        try:
            if self._ps is not None:
                total = 0.0
                for p in self._tree():
                    t = p.cpu_times()
                    total += t.user + t.system + (t.children_user + t.children_system if p is self._ps else 0.0)
                return total
            tick = os.sysconf("SC_CLK_TCK")
            return sum(sum(int(v) for v in _proc_stat(pid)[11:15]) / tick for pid in _proc_tree(self.pid))
        except (OSError, ValueError, IndexError, LookupError):
            return None
        except Exception:  # psutil.Error (a process ended between listing and reading)
            return None

    def rss_bytes(self) -> int | None:
        if not self.available:
            return None
        try:
            if self._ps is not None:
                return sum(p.memory_info().rss for p in self._tree())
            total = 0
            for pid in _proc_tree(self.pid):
                m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
                total += int(m.group(1)) * 1024 if m else 0
            return total
        except (OSError, ValueError, LookupError):
            return None
        except Exception:
            return None


def _proc_stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2:].split()  # fields from "state" on (3rd); utime is index 11


def _proc_tree(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents.setdefault(int(_proc_stat(int(d.name))[1]), []).append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += parents.get(p, [])
    return out


class ServerProcess:
    """`speechadapt serve` on 127.0.0.1, a free port, as a subprocess (its output in `log`)."""

    def __init__(self, model_store: Path, extra: list[str], log: Path, default_model: str = ""):
        exe = Path(sys.executable).parent / "speechadapt"
        base = [str(exe)] if exe.is_file() else [sys.executable, "-m", "speechadapt.client.cli"]
        self.command = [*base, "serve", "--host", "127.0.0.1", "--port", "0", "--model-store", str(model_store),
                        *(["--default-model", default_model] if default_model else []), *extra]
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.address: str | None = None

    def start(self, timeout: float = 180) -> str:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening on (\S+):(\d+)", self.log.read_text(errors="replace"))
            if m:
                self.address = f"{m.group(1)}:{m.group(2)}"
                return self.address
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"the server did not start ({shlex.join(self.command)}):\n{tail}")

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)


# -- streaming


def _new_client(target: str):
    from speechadapt.client import AsyncSpeechClient

    return AsyncSpeechClient(target, options=CHANNEL_OPTIONS)


async def run_stream(client, utt: Utt, *, paced: bool, interim: bool, chunk_ms: float, timeout: float,
                     max_utterance_ms: int = 0, model: str = "") -> dict:
    """One StreamingRecognize call; times on this process's perf_counter clock."""
    from speechadapt.client import SpeechAdaptError, StreamConfig
    from speechadapt.client.audio import pcm_chunks

    cfg = StreamConfig(sample_rate_hertz=utt.rate, audio_channel_count=utt.channels, model=model,
                       interim_results=interim, word_time_offsets=False, max_utterance_ms=max_utterance_ms)
    chunks = list(pcm_chunks(utt.samples, utt.rate, chunk_ms))
    frame_bytes = 2 * utt.channels
    marks: dict[str, float] = {}

    speech_bytes = (utt.speech_frames or len(utt.samples)) * frame_bytes

    async def feed():
        t0 = time.perf_counter()
        marks["first_chunk"], sent = t0, 0
        for i, c in enumerate(chunks):
            if paced:
                wait = t0 + sent / frame_bytes / utt.rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
            if sent + len(c) >= speech_bytes and "speech_end" not in marks:
                marks["speech_end"] = time.perf_counter()  # the chunk holding the last speech sample
            if i == len(chunks) - 1:
                marks["last_chunk"] = time.perf_counter()
            yield c
            sent += len(c)

    finals: list[str] = []

    async def consume():
        async for r in client.stream(feed(), cfg):
            t = time.perf_counter()
            if r.transcript and "first_text" not in marks:
                marks["first_text"] = t
            if r.is_final:
                marks["last_final"] = t
                if r.transcript:
                    finals.append(r.transcript)

    rec = {"utt": utt.name, "audio_s": round(utt.seconds, 3), "ok": False, "error": None,
           "first_partial_s": None, "final_s": None, "final_before_eos": None, "speech_end_to_final_s": None,
           "wall_s": None,
           "text": utt.text, "hyp": ""}
    start = time.perf_counter()
    try:
        await asyncio.wait_for(consume(), timeout)
    except SpeechAdaptError as e:
        rec["error"], rec["message"] = e.code, e.message[:300]
    except asyncio.TimeoutError:
        rec["error"] = "TIMEOUT"
    except Exception as e:  # noqa: BLE001 - counted, never fatal
        rec["error"], rec["message"] = type(e).__name__, str(e)[:300]
    end = time.perf_counter()
    rec["wall_s"] = round(end - marks.get("first_chunk", start), 4)
    rec["hyp"], rec["finals"] = " ".join(finals), len(finals)
    if rec["error"] is None:
        if "last_final" not in marks or "last_chunk" not in marks:
            rec["error"] = "NO_FINAL"
        else:
            rec["ok"] = True
            lat, early = final_latency(marks["last_chunk"], marks["last_final"])
            rec["final_s"], rec["final_before_eos"] = round(lat, 4), early
            if paced and utt.speech_frames:
                rec["speech_end_to_final_s"] = round(marks["last_final"] - marks["speech_end"], 4)
            if "first_text" in marks:
                rec["first_partial_s"] = round(marks["first_text"] - marks["first_chunk"], 4)
    return rec


class Meter:
    """Server CPU and peak RSS, this process's CPU, and wall time over a measured span."""

    def __init__(self, stats: ProcStats):
        self.stats = stats

    async def __aenter__(self):
        self.t0, self.cpu0, self.own0 = time.perf_counter(), self.stats.cpu_seconds(), time.process_time()
        self.rss_peak = self.stats.rss_bytes()
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self):
        while True:
            await asyncio.sleep(0.5)
            rss = await asyncio.to_thread(self.stats.rss_bytes)
            if rss is not None:
                self.rss_peak = max(self.rss_peak or 0, rss)

    async def __aexit__(self, *exc):
        self._task.cancel()
        self.wall = time.perf_counter() - self.t0
        cpu1 = self.stats.cpu_seconds()
        self.server_cpu_s = None if cpu1 is None or self.cpu0 is None else cpu1 - self.cpu0
        self.client_cpu_s = time.process_time() - self.own0

    def as_dict(self, audio_s: float) -> dict:
        cpu = self.server_cpu_s
        return {"wall_s": round(self.wall, 2),
                "server_cpu_pct": None if cpu is None else round(100 * cpu / self.wall, 1),
                "server_cpu_s_per_audio_s": None if cpu is None or not audio_s else round(cpu / audio_s, 4),
                "server_rss_mb_peak": None if self.rss_peak is None else round(self.rss_peak / 2**20, 1),
                "client_cpu_pct": round(100 * self.client_cpu_s / self.wall, 1)}


def _wer(recs: list[dict]) -> float | None:
    from speechadapt.asr.evaluation import error_rates

    pairs = [(r["text"], r["hyp"]) for r in recs if r["ok"] and r["text"]]
    if not pairs:
        return None
    try:
        return error_rates([p[0] for p in pairs], [p[1] for p in pairs])[0]
    except ValueError:
        return None


def summarize(recs: list[dict]) -> dict:
    ok = [r for r in recs if r["ok"]]
    codes = Counter(r["error"] for r in recs if not r["ok"])
    return {"measured": len(recs), "ok": len(ok), "errors": sum(codes.values()), "error_codes": dict(codes),
            "first_partial_ms": percentiles([r["first_partial_s"] * 1000 for r in ok if r["first_partial_s"] is not None]),
            "final_ms": percentiles([r["final_s"] * 1000 for r in ok]),
            "speech_end_to_final_ms": percentiles([r["speech_end_to_final_s"] * 1000 for r in ok
                                                   if r["speech_end_to_final_s"] is not None]),
            "finals_before_eos": sum(1 for r in ok if r["final_before_eos"]),
            "audio_s": round(sum(r["audio_s"] for r in recs), 2), "wer": _wer(recs)}


async def run_clients(target: str, stats: ProcStats, jobs: list[list[Utt]], *, paced: bool, interim: bool,
                      chunk_ms: float, stagger_s: float, timeout_pad: float, model: str,
                      max_utterance_ms: int = 0) -> tuple[list[dict], dict]:
    """Client k streams jobs[k] one after another (its own channel); returns (stream records, meter dict)."""
    clients = [_new_client(target) for _ in jobs]
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel.channel_ready() for c in clients)), 60)
    except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the streams then report the failure
        pass
    n = len(jobs)

    async def one(k: int) -> list[dict]:
        if stagger_s and n > 1:
            await asyncio.sleep(stagger_s * k / n)
        out = []
        for utt in jobs[k]:
            timeout = (utt.seconds if paced else 0) + timeout_pad
            out.append(await run_stream(clients[k], utt, paced=paced, interim=interim, chunk_ms=chunk_ms,
                                        timeout=timeout, max_utterance_ms=max_utterance_ms, model=model))
        return out

    try:
        async with Meter(stats) as meter:
            per_client = await asyncio.gather(*(one(k) for k in range(n)))
    finally:
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    recs = [r for rs in per_client for r in rs]
    return recs, meter.as_dict(sum(r["audio_s"] for r in recs))


TIMING_KEYS = ("utt", "audio_s", "ok", "error", "message", "first_partial_s", "final_s", "final_before_eos",
               "speech_end_to_final_s", "wall_s", "finals")


def compact(recs: list[dict], texts: bool = False) -> list[dict]:
    """Stream records for the JSON: timings, and the reference and hypothesis only when `texts`."""
    keys = TIMING_KEYS + (("text", "hyp") if texts else ())
    return [{k: r[k] for k in keys if k in r} for r in recs]


def assign(utts: list[Utt], clients: int, per_client: int, offset: int = 0) -> list[list[Utt]]:
    return [[utts[(offset + k * per_client + j) % len(utts)] for j in range(per_client)] for k in range(clients)]


def _load() -> list[float] | None:
    return bm._loadavg()


async def realtime_part(args, target, stats, utts) -> dict:
    levels: list[dict] = []

    async def level(n: int) -> dict:
        rounds = max(1, math.ceil(args.samples / n))
        load = _load()
        recs, meter = await run_clients(target, stats, assign(utts, n, rounds, offset=7 * n), paced=True,
                                        interim=True, chunk_ms=args.chunk_ms, stagger_s=args.stagger_s,
                                        timeout_pad=args.timeout, model=args.model)
        lv = {"streams": n, "rounds": rounds, **summarize(recs), **meter, "loadavg": load, "records": compact(recs)}
        levels.append(lv)
        fp, fm = lv["first_partial_ms"], lv["final_ms"]
        print(f"  realtime {n:>3} streams: {lv['ok']}/{lv['measured']} ok, final p95 "
              f"{_ms(fm and fm['p95'])} ms, first partial p95 {_ms(fp and fp['p95'])} ms, "
              f"server CPU {lv['server_cpu_pct']}%, load {load}", file=sys.stderr, flush=True)
        await asyncio.sleep(1.0)
        return lv

    for n in args.streams:
        await level(n)
    probes = []
    for _ in range(args.bisect_steps):
        cap = realtime_capacity(levels, args.threshold_ms)
        probe = bisect_probe(cap, first_failing_above(levels, cap, args.threshold_ms),
                             {lv["streams"] for lv in levels})
        if probe is None:
            break
        probes.append(probe)
        await level(probe)
    levels.sort(key=lambda d: d["streams"])
    passing = [lv["streams"] for lv in levels if level_passes(lv, args.threshold_ms)]
    return {"threshold_ms": args.threshold_ms, "levels": levels, "bisect_probes": probes,
            "capacity": realtime_capacity(levels, args.threshold_ms), "passing_levels": passing}


async def throughput_part(args, target, stats, utts) -> list[dict]:
    rows = []
    for n in args.throughput_streams:
        rounds = max(1, math.ceil(args.samples / n))
        load = _load()
        recs, meter = await run_clients(target, stats, assign(utts, n, rounds, offset=3 * n), paced=False,
                                        interim=True, chunk_ms=args.chunk_ms, stagger_s=0,
                                        timeout_pad=args.timeout, model=args.model)
        s = summarize(recs)
        ok_audio = sum(r["audio_s"] for r in recs if r["ok"])
        row = {"streams": n, **s, **meter, "loadavg": load,
               "x_realtime": round(ok_audio / meter["wall_s"], 2) if meter["wall_s"] else None,
               "rtf": round(meter["wall_s"] / ok_audio, 4) if ok_audio else None}
        rows.append(row)
        print(f"  throughput {n:>3} streams: {row['x_realtime']}x real time, {s['errors']} errors, server CPU "
              f"{row['server_cpu_pct']}%", file=sys.stderr, flush=True)
        await asyncio.sleep(1.0)
    return rows


async def length_part(args, target, stats, utts) -> list[dict]:
    mono = [u for u in utts if u.channels == 1 and u.rate == utts[0].rate]
    rows = []
    for seconds in args.lengths:
        u, sentences = joined(mono, seconds, args.pause_s, args.trailing_silence, f"joined-{seconds}s")
        max_ms = min(300000, max(30000, int(2 * u.seconds * 1000)))  # one utterance, not cut at the default 30 s
        common = dict(chunk_ms=args.chunk_ms, stagger_s=0, timeout_pad=args.timeout, model=args.model,
                      max_utterance_ms=max_ms)
        reps = max(1, args.length_reps if seconds <= 10 else math.ceil(args.length_reps / 3))
        recs, meter = await run_clients(target, stats, [[u] * reps], paced=False, interim=True, **common)
        ok = [r for r in recs if r["ok"]]
        row = {"target_s": seconds, "audio_s": round(u.seconds, 2), "speech_s": round(u.speech_frames / u.rate, 2),
               "sentences": sentences, "reps": reps, "errors": len(recs) - len(ok),
               "fast": {**meter, "wall_ms_per_audio_s": round(1000 * float(np.median([r["wall_s"] for r in ok]))
                                                               / u.seconds, 1) if ok else None,
                        "server_cpu_ms_per_audio_s": None if meter["server_cpu_s_per_audio_s"] is None
                        else round(1000 * meter["server_cpu_s_per_audio_s"], 1),
                        "final_ms": percentiles([r["final_s"] * 1000 for r in ok])},
               "finals_per_stream": sorted({r["finals"] for r in ok}), "wer": _wer(recs)}
        if args.length_paced:
            recs_p, meter_p = await run_clients(target, stats, [[u]], paced=True, interim=True, **common)
            okp = [r for r in recs_p if r["ok"]]
            row["paced"] = {**meter_p, "errors": len(recs_p) - len(okp),
                            "server_cpu_ms_per_audio_s": None if meter_p["server_cpu_s_per_audio_s"] is None
                            else round(1000 * meter_p["server_cpu_s_per_audio_s"], 1),
                            "final_ms": okp[0]["final_s"] * 1000 if okp else None,
                            "speech_end_to_final_ms": okp[0]["speech_end_to_final_s"] * 1000
                            if okp and okp[0]["speech_end_to_final_s"] is not None else None,
                            "first_partial_ms": okp[0]["first_partial_s"] * 1000
                            if okp and okp[0]["first_partial_s"] is not None else None,
                            "wer": _wer(recs_p)}
        row["records"] = compact(recs, texts=True)
        rows.append(row)
        print(f"  length {seconds:>3} s: {row['fast']['wall_ms_per_audio_s']} wall ms / audio s, "
              f"{row['fast']['server_cpu_ms_per_audio_s']} server CPU ms / audio s", file=sys.stderr, flush=True)
        await asyncio.sleep(1.0)
    return rows


async def ours_on(args, target, stats, utts: list[Utt]) -> dict:
    """Each utterance once, `--wer-streams` at a time, unpaced, finals only."""
    n = max(1, min(args.wer_streams, len(utts)))
    jobs = [utts[k::n] for k in range(n)]
    recs, meter = await run_clients(target, stats, jobs, paced=False, interim=False, chunk_ms=args.chunk_ms,
                                    stagger_s=0, timeout_pad=args.timeout, model=args.model)
    s = summarize(recs)
    return {"utterances": len(utts), "audio_s": round(sum(u.seconds for u in utts), 2), "wer": s["wer"],
            "errors": s["errors"], "error_codes": s["error_codes"],
            "cpu_s_per_audio_s": meter["server_cpu_s_per_audio_s"], "wall_rtf": round(meter["wall_s"] / s["audio_s"], 4)
            if s["audio_s"] else None, "streams": n, "meter": meter,
            "hyps": [{"utt": r["utt"], "ref": r["text"], "hyp": r["hyp"], "error": r["error"]} for r in recs]}


async def server_parts(args, target, stats, target_utts, real) -> dict:
    out: dict = {}
    # warm-up: the first request loads the model
    warm, _ = await run_clients(target, stats, [target_utts[:1], target_utts[1:2] or target_utts[:1]], paced=False,
                                interim=True, chunk_ms=args.chunk_ms, stagger_s=0, timeout_pad=args.timeout,
                                model=args.model)
    out["warmup_errors"] = [r["error"] for r in warm if not r["ok"]]
    if out["warmup_errors"] and all(not r["ok"] for r in warm):
        raise RuntimeError(f"the server fails every stream: {warm[0].get('error')}: {warm[0].get('message', '')}")
    if "realtime" in args.parts:
        out["realtime"] = await realtime_part(args, target, stats, target_utts)
    if "throughput" in args.parts:
        out["throughput"] = await throughput_part(args, target, stats, target_utts)
    if "length" in args.parts:
        out["length"] = await length_part(args, target, stats, target_utts)
    if "wer" in args.parts:
        out["wer_ours"] = {"target domain (synthetic)": await ours_on(args, target, stats, target_utts)}
        for name, utts, _ in real:
            out["wer_ours"][name] = await ours_on(args, target, stats, utts)
            print(f"  ours on {name}: WER {bm._pct(out['wer_ours'][name]['wer'])}", file=sys.stderr, flush=True)
    return out


# -- pocketsphinx


def pocketsphinx_on(utts: list[Utt]) -> dict:
    """pocketsphinx's default English model, one thread, whole-utterance decoding; CPU of this thread."""
    from pocketsphinx import Decoder

    from speechadapt.asr.audio import downmix, resample
    from speechadapt.asr.evaluation import error_rates

    dec = Decoder(loglevel="FATAL")
    rate = int(dec.config["samprate"])
    cpu = wall = audio = 0.0
    hyps = []
    for u in utts:
        x = u.samples
        if u.channels > 1 or u.rate != rate:
            f = resample(downmix(x.astype(np.float32) / 32768), u.rate, rate)
            x = np.round(np.clip(f, -1, 32767 / 32768) * 32768).astype(np.int16)
        audio += len(x) / rate
        c0, w0 = time.thread_time(), time.perf_counter()
        dec.start_utt()
        dec.process_raw(x.astype("<i2").tobytes(), full_utt=True)
        dec.end_utt()
        hyp = dec.hyp()
        cpu += time.thread_time() - c0
        wall += time.perf_counter() - w0
        hyps.append(hyp.hypstr if hyp is not None else "")
    wer = error_rates([u.text for u in utts], hyps)[0]
    return {"utterances": len(utts), "audio_s": round(audio, 2), "wer": wer,
            "cpu_s_per_audio_s": round(cpu / audio, 4), "wall_rtf": round(wall / audio, 4),
            "hyps": [{"utt": u.name, "ref": u.text, "hyp": h} for u, h in zip(utts, hyps)]}


def pocketsphinx_info() -> dict:
    try:
        from importlib.metadata import version

        from pocketsphinx import Decoder

        d = Decoder(loglevel="FATAL")
        return {"version": version("pocketsphinx"), "hmm": Path(d.config["hmm"]).name,
                "lm": Path(d.config["lm"]).name, "dict": Path(d.config["dict"]).name,
                "samprate": int(d.config["samprate"])}
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"}


# -- reporting


def _ms(v) -> str:
    return "-" if v is None else f"{v:.0f}"


def _pq(p: dict | None) -> str:
    return "-" if p is None else f"{p['p50']:.0f} / {p['p95']:.0f} / {p['p99']:.0f}"


def _num(v, fmt="{:.1f}") -> str:
    return "-" if v is None else fmt.format(v)


def realtime_table(rt: dict) -> str:
    lines = ["| streams | ok / measured | errors | first partial ms p50 / p95 / p99 | final after end of audio ms "
             "p50 / p95 / p99 | finals before end | end of speech -> final ms p50 / p95 / p99 | server CPU % | "
             "server RSS MB | client CPU % | WER |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for lv in rt["levels"]:
        codes = ", ".join(f"{k} {v}" for k, v in lv["error_codes"].items())
        lines.append(f"| {lv['streams']} | {lv['ok']} / {lv['measured']} | {lv['errors']}{f' ({codes})' if codes else ''}"
                     f" | {_pq(lv['first_partial_ms'])} | {_pq(lv['final_ms'])} | {lv['finals_before_eos']} | "
                     f"{_pq(lv.get('speech_end_to_final_ms'))} | "
                     f"{_num(lv['server_cpu_pct'], '{:.0f}')} | {_num(lv['server_rss_mb_peak'], '{:.0f}')} | "
                     f"{_num(lv['client_cpu_pct'], '{:.0f}')} | {bm._pct(lv['wer'])} |")
    cap = rt["capacity"]
    lines += ["", f"Real-time capacity (every level up to it error-free with p95 final <= {rt['threshold_ms']:.0f} ms): "
              f"**{cap if cap is not None else 'none'}** streams"
              + (f" (bisection tried {', '.join(map(str, rt['bisect_probes']))})" if rt["bisect_probes"] else "")]
    return "\n".join(lines)


def throughput_table(rows: list[dict]) -> str:
    lines = ["| streams | utterances | audio s | wall s | x real time | RTF | server CPU s / audio s | server CPU % | errors |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['streams']} | {r['ok']} / {r['measured']} | {r['audio_s']:.0f} | {r['wall_s']:.1f} | "
                     f"{_num(r['x_realtime'])} | {_num(r['rtf'], '{:.3f}')} | {_num(r['server_cpu_s_per_audio_s'], '{:.3f}')} | "
                     f"{_num(r['server_cpu_pct'], '{:.0f}')} | {r['errors']} |")
    return "\n".join(lines)


def length_table(rows: list[dict]) -> str:
    lines = ["| utterance | audio s | as fast as possible: wall ms / audio s | server CPU ms / audio s | "
             "real-time pace: final after end of audio ms | end of speech -> final ms | server CPU ms / audio s | WER |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        f, p = r["fast"], r.get("paced") or {}
        lines.append(f"| ~{r['target_s']} s ({r['reps']} fast run{'s' if r['reps'] > 1 else ''}) | {r['audio_s']:.1f} | "
                     f"{_num(f['wall_ms_per_audio_s'])} | {_num(f['server_cpu_ms_per_audio_s'])} | "
                     f"{_ms(p.get('final_ms'))} | {_ms(p.get('speech_end_to_final_ms'))} | "
                     f"{_num(p.get('server_cpu_ms_per_audio_s'))} | {bm._pct(r['wer'])} |")
    return "\n".join(lines)


def wer_table(rows: list[dict]) -> str:
    lines = ["| set | utts | audio min | ours WER | pocketsphinx WER | ours CPU s / audio s | pocketsphinx CPU s / audio s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        o, p = r.get("ours") or {}, r.get("pocketsphinx") or {}
        if not o and not p:
            lines.append(f"| {r['set']} | - | - | - | - | - | - |")
            continue
        audio = o.get("audio_s") or p.get("audio_s") or 0
        lines.append(f"| {r['set']} | {o.get('utterances', p.get('utterances'))} | {audio / 60:.2f} | "
                     f"{bm._pct(o.get('wer'))} | {bm._pct(p.get('wer'))} | {_num(o.get('cpu_s_per_audio_s'), '{:.3f}')} | "
                     f"{_num(p.get('cpu_s_per_audio_s'), '{:.3f}')} |")
    notes = [f"- {r['set']}: {r['note']}" for r in rows if r.get("note")]
    return "\n".join(lines + ([""] + notes if notes else []))


def targets(result: dict) -> list[dict]:
    out = []
    rt = result.get("realtime")
    if rt:
        out.append({"target": "concurrent real-time streams (p95 final <= 500 ms, no errors)", "goal": ">= 40",
                    "measured": rt["capacity"], "met": rt["capacity"] is not None and rt["capacity"] >= TARGETS["streams"]})
        at20 = next((lv for lv in rt["levels"] if lv["streams"] == 20), None)
        fm = at20 and at20["final_ms"]
        out.append({"target": "final after end of audio, p95 at 20 streams", "goal": "<= 250 ms",
                    "measured": None if not fm else round(fm["p95"]), "met": None if not fm else
                    (fm["p95"] <= TARGETS["final_p95_ms_at_20"] and at20["errors"] == 0)})
        fp = at20 and at20["first_partial_ms"]
        out.append({"target": "first partial, p95 at 20 streams", "goal": "<= 700 ms",
                    "measured": None if not fp else round(fp["p95"]), "met": None if not fp else
                    fp["p95"] <= TARGETS["first_partial_ms"]})
    wer = {r["set"]: r for r in result.get("wer", {}).get("rows", [])}
    td = wer.get("target domain (synthetic)")
    if td and (td.get("ours") or {}).get("wer") is not None and (td.get("pocketsphinx") or {}).get("wer") is not None:
        o, p = td["ours"]["wer"], td["pocketsphinx"]["wer"]
        out.append({"target": "WER on target-domain audio", "goal": f"< pocketsphinx ({100 * p:.1f}%)",
                    "measured": f"{100 * o:.1f}%", "met": o < p})
    ln = result.get("length") or []
    if len(ln) >= 2 and all(r["fast"]["server_cpu_ms_per_audio_s"] for r in (ln[0], ln[-1])):
        a, b = ln[0]["fast"]["server_cpu_ms_per_audio_s"], ln[-1]["fast"]["server_cpu_ms_per_audio_s"]
        out.append({"target": f"cost per audio second, ~{ln[-1]['target_s']} s vs ~{ln[0]['target_s']} s utterance",
                    "goal": "does not grow", "measured": f"{b:.1f} vs {a:.1f} server CPU ms / audio s (x{b / a:.2f})",
                    "met": b <= 1.15 * a})
    return out


def targets_table(rows: list[dict]) -> str:
    lines = ["| target | goal | measured | met? |", "| --- | --- | --- | --- |"]
    for r in rows:
        met = "not measured" if r["met"] is None else ("**yes**" if r["met"] else "**no**")
        lines.append(f"| {r['target']} | {r['goal']} | {'-' if r['measured'] is None else r['measured']} | {met} |")
    return "\n".join(lines)


def report(result: dict) -> str:
    parts = []
    if result.get("realtime"):
        parts += ["### Real-time streams", "", realtime_table(result["realtime"]), ""]
    if result.get("throughput"):
        parts += ["### Maximum throughput", "", throughput_table(result["throughput"]), ""]
    if result.get("length"):
        parts += ["### Cost per audio second by utterance length", "", length_table(result["length"]), ""]
    if result.get("wer"):
        parts += ["### WER and CPU cost beside pocketsphinx", "", wer_table(result["wer"]["rows"]), ""]
    if result.get("targets"):
        parts += ["### Targets", "", targets_table(result["targets"]), ""]
    return "\n".join(parts)


# -- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda name: (lambda s: parse_ints(s, name))  # noqa: E731
    p.add_argument("--streams", type=ints("--streams"), default=None, metavar="N,N,...",
                   help="concurrency levels at real-time pace (default: 1,10,20,40,60; --quick: 1,10)")
    p.add_argument("--samples", type=int, default=None, metavar="N",
                   help="streams measured per level at least: clients repeat utterances (default: 30; --quick: 3)")
    p.add_argument("--threshold-ms", type=float, default=500.0,
                   help="p95 final latency bound of a real-time level (default: 500)")
    p.add_argument("--bisect-steps", type=int, default=None, metavar="N",
                   help="levels tried between the last passing and the first failing one (default: 3; --quick: 0)")
    p.add_argument("--throughput-streams", type=ints("--throughput-streams"), default=None, metavar="N,N,...",
                   help="concurrent clients sending as fast as possible (default: 1,4,16; --quick: 1,4)")
    p.add_argument("--max-throughput", action="store_true", help="run only the maximum-throughput part")
    p.add_argument("--lengths", type=ints("--lengths"), default=None, metavar="S,S",
                   help="utterance lengths (s) of the length part (default: 5,60; --quick: 5,20)")
    p.add_argument("--length-reps", type=int, default=6, metavar="N",
                   help="as-fast-as-possible runs of the short utterance (a third as many of the long; default: 6)")
    p.add_argument("--no-length-paced", dest="length_paced", action="store_false",
                   help="length part: skip the real-time paced runs")
    p.add_argument("--pause-s", type=float, default=0.2,
                   help="silence added between joined sentences (below the 800 ms endpoint; default: 0.2)")
    p.add_argument("--parts", default="realtime,throughput,length,wer", metavar="P,P,...",
                   help="realtime, throughput, length, wer (default: all)")
    p.add_argument("--chunk-ms", type=float, default=100.0, help="audio per request message (default: 100)")
    p.add_argument("--stagger-s", type=float, default=1.0,
                   help="client starts are spread evenly over this many seconds (default: 1)")
    p.add_argument("--trailing-silence", type=float, default=1.0, metavar="S",
                   help="silence after each test sentence (default: 1.0)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S",
                   help="a stream fails (TIMEOUT) this long after its audio would have ended (default: 120)")
    p.add_argument("--wer-streams", type=int, default=2, metavar="N",
                   help="concurrent streams of the WER part (default: 2)")
    p.add_argument("--per-voice", type=int, default=None, metavar="N",
                   help="target-domain sentences per voice (default: 20; --quick: 3)")
    p.add_argument("--voices", default="en-us,en-gb", metavar="V,V", help="espeak-ng voices (default: en-us,en-gb)")
    p.add_argument("--variants", metavar="V,V,...",
                   help="speaker variants (default: the first 4 the model was not trained on)")
    p.add_argument("--words", type=lambda s: tuple(int(v) for v in s.split(":")), default=(9, 20), metavar="LO:HI",
                   help="words per sentence (default: 9:20, about 3-8 s)")
    p.add_argument("--seed", type=int, default=321, help="test text seed (default: 321)")
    p.add_argument("--test-text", metavar="FILE",
                   help="target-domain sentences from this file instead of generated ones (e.g. the test split of "
                        "`speechadapt data text`; its first --per-voice lines that are not training transcripts)")
    p.add_argument("--train-summary", metavar="PATH", help="training corpus summary.json, when the card lacks it")
    p.add_argument("--no-real", action="store_true", help="skip the real speech of ../shared/data")
    p.add_argument("--no-pocketsphinx", action="store_true", help="skip pocketsphinx")
    p.add_argument("--model", default="base-en", metavar="REF",
                   help="model to request, and the started server's default (default: base-en; "
                        "bench/real_speech.py measures whisper-tiny-en)")
    p.add_argument("--model-store", default=None, metavar="DIR",
                   help="the server's model store (default: an empty one in --workdir, so the shipped base-en serves)")
    p.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                   help="extra `speechadapt serve` argument, repeatable (e.g. --server-arg=--max-streams=128)")
    p.add_argument("--server", metavar="HOST:PORT", help="use a running server instead of starting one")
    p.add_argument("--server-pid", type=int, metavar="PID", help="with --server: its pid, for CPU and RSS")
    p.add_argument("--workdir", default=str(REPO / ".cache" / "bench"), metavar="DIR",
                   help="test set cache (default: .cache/bench)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="synthesis processes (default: 2)")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "streaming.json"), metavar="PATH",
                   help="JSON results (default: bench/results/streaming.json)")
    p.add_argument("--quick", action="store_true", help="a ~2 minute smoke run")
    args = p.parse_args(argv)
    q = args.quick
    args.streams = args.streams or ([1, 10] if q else [1, 10, 20, 40, 60])
    args.samples = args.samples or (3 if q else 30)
    args.bisect_steps = (0 if q else 3) if args.bisect_steps is None else args.bisect_steps
    args.throughput_streams = args.throughput_streams or ([1, 4] if q else [1, 4, 16])
    args.lengths = args.lengths or ([5, 20] if q else [5, 60])
    args.per_voice = args.per_voice or (3 if q else 20)
    if q:
        args.length_paced = False
    args.voices = [v.strip() for v in args.voices.split(",") if v.strip()]
    args.parts = ["throughput"] if args.max_throughput else [s.strip() for s in args.parts.split(",") if s.strip()]
    bad = set(args.parts) - {"realtime", "throughput", "length", "wer"}
    if bad or not args.parts:
        p.error(f"--parts: unknown {', '.join(sorted(bad)) or '(none)'}; use realtime, throughput, length, wer")
    if len(args.words) != 2 or not 1 <= args.words[0] <= args.words[1]:
        p.error("--words is LO:HI with 1 <= LO <= HI")
    if args.samples < 1 or args.per_voice < 1 or args.length_reps < 1 or args.wer_streams < 1:
        p.error("--samples, --per-voice, --length-reps and --wer-streams must be at least 1")
    if args.server_pid and not args.server:
        p.error("--server-pid goes with --server")
    if args.server and (args.server_arg or args.model_store):
        p.error("--server-arg and --model-store start a server; --server uses a running one")
    if args.model_store is None and not args.server:
        args.model_store = str(Path(args.workdir) / "streaming-store")  # empty: the shipped base-en serves
    return args


def code_version() -> dict:
    """The commit the server's code comes from, and its uncommitted changes under asr/, server/, client/."""
    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = git("status", "--porcelain", "--", "asr", "server", "client", "protos")
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted": [line[3:] for line in dirty.splitlines()]}


def _interrupt(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # the finally below stops the server
    started, load_start = time.monotonic(), _load()
    import torch

    torch.set_num_threads(1)  # this process: clients and pocketsphinx (resampling), one core at most
    try:
        target_utts, target_meta = target_domain_set(args)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: test set: {e}", file=sys.stderr)
        return 2
    real, missing = ([], [{"set": "real speech", "note": "skipped (--quick)" if args.quick else "skipped (--no-real)"}]) \
        if (args.quick or args.no_real or "wer" not in args.parts) else real_speech_sets(args)
    print(f"target-domain set: {len(target_utts)} sentences, {target_meta['speech_seconds']} s of speech + "
          f"{args.trailing_silence} s silence; voices {', '.join(args.voices)}, variants "
          f"{', '.join(target_meta['variants'])}; real sets: {', '.join(n for n, _, _ in real) or 'none'}",
          file=sys.stderr, flush=True)

    server = None
    result: dict = {}
    if args.server:
        target, stats = args.server, ProcStats(args.server_pid)
        server_info = {"address": target, "started_by_benchmark": False, "pid": args.server_pid}
    else:
        Path(args.model_store).mkdir(parents=True, exist_ok=True)
        server = ServerProcess(Path(args.model_store), args.server_arg, Path(args.workdir) / "streaming-server.log",
                               args.model)
        server_info = {"command": shlex.join(server.command), "started_by_benchmark": True,
                       "log": str(server.log), "args": args.server_arg, "code": code_version()}
    try:
        if server is not None:
            target = server.start()
            stats = ProcStats(server.proc.pid)
            server_info.update(address=target, pid=server.proc.pid)
            print(f"server on {target} (pid {server.proc.pid})", file=sys.stderr, flush=True)
        server_info["cpu_rss_measured"] = stats.available
        result = asyncio.run(server_parts(args, target, stats, target_utts, real))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.stop()

    wer_rows = []
    if "wer" in args.parts:
        ps_info = None if args.no_pocketsphinx else pocketsphinx_info()
        sets = [("target domain (synthetic)", target_utts, "")] + real
        for name, utts, note in sets:
            row = {"set": name, "ours": result["wer_ours"].get(name), "note": note}
            if ps_info is not None and "error" not in ps_info:
                row["pocketsphinx"] = pocketsphinx_on(utts)
                print(f"  pocketsphinx on {name}: WER {bm._pct(row['pocketsphinx']['wer'])}, "
                      f"{row['pocketsphinx']['cpu_s_per_audio_s']} CPU s / audio s", file=sys.stderr, flush=True)
            wer_rows.append(row)
        wer_rows += [{"set": m["set"], "note": m["note"]} for m in missing]
        if ps_info is None:
            wer_rows.append({"set": "pocketsphinx", "note": "skipped (--no-pocketsphinx)"})
        elif "error" in ps_info:
            wer_rows.append({"set": "pocketsphinx", "note": f"unavailable: {ps_info['error']} (pip install pocketsphinx)"})
        result["wer"] = {"rows": wer_rows, "pocketsphinx": ps_info,
                         "ours": "server over gRPC, interim_results=false, unpaced, server CPU (all threads) per audio s",
                         "pocketsphinx_mode": "default en-us model, full-utterance decoding, one thread, thread CPU per audio s"}
        result.pop("wer_ours", None)
    result["targets"] = targets(result)
    result["markdown"] = report(result)

    print()
    print(result["markdown"])
    machine = bm.machine_info("cpu")
    machine.update(loadavg_start=load_start, loadavg_end=_load(), server_threads="server default (one per core)")
    out_doc = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([Path(sys.executable).name, *sys.argv]) if argv is None
        else shlex.join(["python", "bench/streaming.py", *argv]),
        "settings": {k: v for k, v in vars(args).items() if k not in ("server_pid",)},
        "definitions": {
            "first_partial_ms": "first audio chunk sent -> first result with a non-empty transcript received",
            "final_ms": "last audio chunk sent (then half-close) -> last is_final result received; 0 when the "
                        "final came first (counted in finals_before_eos)",
            "server_cpu_pct": "server process tree CPU time / wall time over the level (100 = one core)",
            "x_realtime": "audio seconds of successful streams / wall seconds",
            "cpu_s_per_audio_s": "CPU seconds per audio second: RTF per core"},
        "server": server_info,
        "test_sets": {"target_domain": target_meta, "real": [{"set": n, "utterances": len(u), "note": note}
                                                              for n, u, note in real], "missing": missing},
        **result,
        "machine": machine,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(out_doc, indent=1, default=str) + "\n")
    print(f"wrote {out} ({out_doc['wall_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
