"""The encoder-decoder model: OpenAI Whisper, stored in our package, served with CTranslate2.

The package holds the Hugging Face `WhisperForConditionalGeneration` state dict as safetensors
(`weights.safetensors`), the byte-level BPE tokenizer (`tokenizer.json`) and the model card; the
card's `hparams` are the Hugging Face `WhisperConfig` values plus the generation settings
(suppressed tokens, alignment heads). Nothing is unpickled.

Training uses the torch model (`build_torch`). Serving converts the package's exact weights to a
CTranslate2 model (int8 by default; measured faster than torch fp32 and int8 dynamic quantisation,
see bench/real_speech.py) once, into a cache folder named by the weights' sha256, so what serves is
what training exported, version for version.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from speechadapt.asr.decoding import Hypothesis, Word
from speechadapt.asr.package import WEIGHTS, ModelCard, PackageError
from speechadapt.asr.store import cache_root
from speechadapt.asr.text import normalize_text
from speechadapt.quote import quote

ARCHITECTURE = "whisper"
TOKENIZER = "tokenizer.json"
SAMPLE_RATE = 16000
HOP = 160  # samples per mel frame (10 ms)
WINDOW_FRAMES = 3000  # Whisper's 30 s input window
FRAME_SECONDS = 0.02  # encoder frames (after the stride-2 convolution)
MAX_PROMPT_TOKENS = 223  # Whisper's limit for previous-text prompts (half its 448-token context)
log = logging.getLogger(__name__)

# WhisperConfig keys a package records (the rest take the library's defaults).
CONFIG_KEYS = (
    "vocab_size", "num_mel_bins", "d_model", "encoder_layers", "encoder_attention_heads", "decoder_layers",
    "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_source_positions",
    "max_target_positions", "activation_function", "scale_embedding", "decoder_start_token_id",
    "eos_token_id", "pad_token_id", "bos_token_id",
)
GENERATION_KEYS = ("suppress_tokens", "begin_suppress_tokens", "alignment_heads")


@dataclass(frozen=True)
class WhisperDecoding:
    """How a Whisper package is decoded when served (the card's `decoding`)."""

    beam_size: int = 5  # finals; interim results are greedy
    min_window_s: float = 15.0  # audio is zero-padded to at least this (short windows make Whisper repeat itself)
    no_speech_threshold: float = 0.6  # a window whose <|nospeech|> probability is above this gives no words
    compute_type: str = "int8"  # CTranslate2 compute type: int8, float32, int8_float32...
    interim_step_s: float = 1.0  # streaming: re-decode the growing utterance after this much new audio
    max_utterance_s: float = 28.0  # streaming: an utterance never outgrows Whisper's window
    # silence put before every window: Whisper misreads speech that starts at its first frame (FSDD digits,
    # trimmed tight: 53% WER without, 30% with 0.3 s; bench/real_speech.py)
    lead_pad_s: float = 0.3

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WhisperDecoding":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown Whisper decoding options: {sorted(unknown)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------- torch

def hf_config(hparams: dict):
    """The Hugging Face WhisperConfig (with its generation settings) for a card's hparams."""
    from transformers import GenerationConfig, WhisperConfig

    cfg = WhisperConfig(**{k: hparams[k] for k in CONFIG_KEYS if k in hparams})
    gen = GenerationConfig(
        decoder_start_token_id=cfg.decoder_start_token_id, eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id,
        **{k: hparams[k] for k in GENERATION_KEYS if k in hparams},
    )
    return cfg, gen


def build_torch(hparams: dict, state: dict | None = None):
    """A torch `WhisperForConditionalGeneration` (fp32) with the given state dict (strict)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    cfg, gen = hf_config(hparams)
    net = WhisperForConditionalGeneration(cfg)
    net.generation_config = gen
    if state is not None:
        state = {k: v.float() for k, v in state.items()}
        state.setdefault("proj_out.weight", state["model.decoder.embed_tokens.weight"])
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [m for m in missing if m != "proj_out.weight"]
        if missing or unexpected:
            raise PackageError(f"weights do not fit the Whisper architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return net.to(torch.float32).eval()


def state_for_package(net, dtype=None) -> dict:
    """The state dict a package stores: contiguous CPU tensors, the tied output projection left out."""
    state = {}
    for k, v in net.state_dict().items():
        if k == "proj_out.weight":
            continue
        v = v.detach().to("cpu")
        state[k] = (v.to(dtype) if dtype is not None else v).contiguous()
    return state


def load_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(folder / WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise PackageError(f"{folder / WEIGHTS} is not a valid safetensors file: {e}") from e


# ------------------------------------------------------------------------------- adapter packages
# An adapter package (card.base set) stores only what its job changed: LoRA factors as "<module>.lora_A" and
# "<module>.lora_B" (weight += lora_scaling * B @ A), and tensors replaced whole under their own names. Its
# base is named by reference and pinned by the sha256 of the base's weights file: a base that changed or went
# missing is an error, never a silent mix.

LORA_A, LORA_B = ".lora_A", ".lora_B"
MAX_BASE_DEPTH = 8
DELTA_SHARE = 0.6  # a job that changed more than this share of the parameters publishes a complete package


def base_store(folder: Path) -> Path | None:
    """The store holding a published package (STORE/<name>/<N>/), else None."""
    folder = Path(folder).absolute()
    return folder.parent.parent if folder.name.isdigit() else None


def package_state(folder: Path, card: ModelCard, store: str | Path | None = None, _depth: int = 0) -> dict:
    """The complete state dict of a Whisper package: its own weights, or its base's with its changes applied.

    An adapter package's base resolves in `store`, else in the store that holds the package."""
    from speechadapt.asr.package import read_card, verify
    from speechadapt.asr.store import ModelNotFound, resolve_path_or_ref

    state = load_state(folder)
    if not card.base:
        return state
    if _depth >= MAX_BASE_DEPTH:
        raise PackageError(f"{folder}: more than {MAX_BASE_DEPTH} adapter packages stacked on each other")
    ref = str(card.base.get("model", ""))
    try:
        bref = resolve_path_or_ref(ref, store if store is not None else base_store(folder))
    except ModelNotFound as e:
        raise PackageError(f"{folder}: its base model {ref!r} is not available ({e})") from None
    bcard = read_card(bref.path)
    verify(bref.path, bcard)
    if bcard.architecture != ARCHITECTURE or bcard.files[WEIGHTS]["sha256"] != card.base.get("weights_sha256"):
        raise PackageError(f"{folder}: its base {bref} is not the model it was trained from (weights sha256 differs)")
    return apply_delta(package_state(bref.path, bcard, store, _depth + 1), state,
                       float(card.base.get("lora_scaling", 1.0)), str(folder))


def apply_delta(base: dict, delta: dict, scaling: float, where: str = "adapter") -> dict:
    """`base` with `delta`'s tensors replaced and its LoRA factors merged (float32)."""
    state = dict(base)
    for k, v in delta.items():
        if k.endswith(LORA_A):
            continue
        if k.endswith(LORA_B):
            module = k[: -len(LORA_B)]
            a, w = delta.get(module + LORA_A), state.get(module + ".weight")
            if a is None or w is None or (v.shape[0], a.shape[1]) != tuple(w.shape) or v.shape[1] != a.shape[0]:
                raise PackageError(f"{where}: LoRA factors for {module} do not fit the base")
            state[module + ".weight"] = w.float() + scaling * (v.float() @ a.float())
        elif k not in state or tuple(state[k].shape) != tuple(v.shape):
            raise PackageError(f"{where}: tensor {k} does not fit the base")
        else:
            state[k] = v
    return state


def lora_factors(net) -> tuple[dict, float]:
    """({"<module>.lora_A": A, "<module>.lora_B": B}, scaling) of a peft LoRA model in package names."""
    out, scaling = {}, 1.0
    for name, module in net.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            key = name.removeprefix("base_model.model.")
            out[key + LORA_A] = module.lora_A["default"].weight.detach().cpu().clone()
            out[key + LORA_B] = module.lora_B["default"].weight.detach().cpu().clone()
            scaling = float(module.scaling["default"])
    return out, scaling


def changed_tensors(base: dict, state: dict) -> dict:
    """The tensors of `state` that differ from `base` (by value)."""
    import torch

    return {k: v for k, v in state.items() if k not in base or not torch.equal(base[k].to(v.dtype), v)}


# ----------------------------------------------------------------------------------------- features

class LogMel:
    """Whisper's 80-bin log-mel spectrogram (the Hugging Face feature extractor, torch backend)."""

    def __init__(self, n_mels: int = 80):
        from transformers import WhisperFeatureExtractor

        self._fe = WhisperFeatureExtractor(feature_size=n_mels)
        self._lock = threading.Lock()

    def __call__(self, samples: np.ndarray, frames: int) -> np.ndarray:
        """float32 mono 16 kHz (at most 30 s) -> (n_mels, frames) padded with silence."""
        samples = np.asarray(samples, dtype=np.float32)[: WINDOW_FRAMES * HOP]
        with self._lock:
            feats = self._fe(samples, sampling_rate=SAMPLE_RATE, return_tensors="np").input_features[0]
        return np.ascontiguousarray(feats[:, :frames])


def window_frames(seconds: float, decoding: WhisperDecoding) -> int:
    """Mel frames fed to the encoder for `seconds` of audio: at least `min_window_s`, at most 30 s, even."""
    n = int(np.ceil(max(seconds, decoding.min_window_s) * SAMPLE_RATE / HOP))
    return min(WINDOW_FRAMES, n + n % 2)


# ------------------------------------------------------------------------------------- CTranslate2

def ct2_folder(folder: Path, card: ModelCard, compute_type: str, store: str | Path | None = None) -> Path:
    """The CTranslate2 conversion of this package's weights (made once, atomically, in the cache)."""
    key = hashlib.sha256(
        f"{card.files[WEIGHTS]['sha256']}:{card.base.get('weights_sha256', '')}:{card.files[TOKENIZER]['sha256']}:"
        f"{compute_type}".encode()
    ).hexdigest()[:32]
    out = cache_root() / "ct2" / key
    if (out / "model.bin").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=out.parent))
    try:
        convert_to_ct2(folder, card, tmp, compute_type, store)
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first
            if not (out / "model.bin").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def convert_to_ct2(folder: Path, card: ModelCard, out: Path, compute_type: str, store: str | Path | None = None) -> None:
    from ctranslate2.converters.transformers import WhisperLoader
    from transformers import PreTrainedTokenizerFast

    net = build_torch(card.hparams, package_state(folder, card, store))
    tok = PreTrainedTokenizerFast(tokenizer_file=str(folder / TOKENIZER))
    spec = WhisperLoader()(net, tok)
    spec.validate()
    spec.optimize(quantization=None if compute_type == "float32" else compute_type.split("_")[0])
    spec.save(str(out))


# ------------------------------------------------------------------------------------------ model

@dataclass(frozen=True)
class Prompt:
    """What a request adds to the decoder: previous text (speech_contexts) as Whisper's prompt."""

    text: str = ""

    @property
    def empty(self) -> bool:
        return not self.text


def parse_prompt(contexts) -> Prompt:
    """speech_contexts -> a decoder prompt: phrases of the most boosted context first. Raises ValueError."""
    from speechadapt.asr.beam import DEFAULT_BOOST, MAX_BOOST

    ranked, problems = [], []
    for i, (phrases, boost) in enumerate(contexts):
        boost = boost or DEFAULT_BOOST
        if not 0 < boost <= MAX_BOOST:
            problems.append(f"speech_contexts[{i}].boost must be in (0, {MAX_BOOST:g}] (0 = default {DEFAULT_BOOST:g}), got {boost:g}")
            continue
        for j, raw in enumerate(phrases):
            text = " ".join(str(raw).split())
            if not normalize_text(text):
                problems.append(f"speech_contexts[{i}].phrases[{j}] {quote(raw)} has no words")
            else:
                ranked.append((-boost, i, j, text))
    if problems:
        raise ValueError("; ".join(problems[:10]))
    return Prompt(", ".join(t for *_, t in sorted(ranked)))


class WhisperModel:
    """A loaded Whisper package: whole-utterance recognition and streams (`new_stream`)."""

    architecture = ARCHITECTURE
    sample_rate = SAMPLE_RATE
    frame_seconds = FRAME_SECONDS

    def __init__(self, card: ModelCard, folder: Path, ref=None, threads: int = 0, store: str | Path | None = None):
        import ctranslate2
        from tokenizers import Tokenizer

        self.card, self.folder, self.ref = card, Path(folder), ref
        self.decoding = WhisperDecoding.from_dict(card.decoding)
        self.tokenizer = Tokenizer.from_file(str(self.folder / TOKENIZER))
        ids = {t: self.tokenizer.token_to_id(t) for t in (
            "<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>", "<|startofprev|>", "<|en|>", "<|transcribe|>")}
        if None in (ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"]):
            raise PackageError(f"{self.folder / TOKENIZER} is not a Whisper tokenizer (special tokens missing)")
        self.eot, self.sot, self.no_timestamps, self.sot_prev = (
            ids["<|endoftext|>"], ids["<|startoftranscript|>"], ids["<|notimestamps|>"], ids["<|startofprev|>"])
        self.multilingual = card.hparams.get("vocab_size", 51864) >= 51865
        self.start = [self.sot] + ([ids["<|en|>"], ids["<|transcribe|>"]] if self.multilingual else []) + [self.no_timestamps]
        self.mel = LogMel(card.hparams.get("num_mel_bins", 80))
        path = ct2_folder(self.folder, card, self.decoding.compute_type, store)
        self.runtime = ctranslate2.models.Whisper(
            str(path), device="cpu", compute_type=self.decoding.compute_type, intra_threads=threads or (os.cpu_count() or 1))
        self._bytes = sum(p.stat().st_size for p in path.iterdir() if p.is_file())

    @property
    def name(self) -> str:
        return str(self.ref) if self.ref else f"{self.card.name}@{self.card.version}"

    def memory_bytes(self) -> int:
        return self._bytes

    def parse_phrases(self, contexts) -> Prompt:
        return parse_prompt(contexts)

    def new_stream(self, input_rate: int, endpoint, phrases: Prompt | None = None, interim: bool = True):
        """A stream; `phrases` (speech_contexts) prompt its interim decodes too; without `interim` results it
        decodes only at endpoints."""
        from speechadapt.asr.whisper_stream import WhisperStream

        stream = WhisperStream(self, input_rate, endpoint)
        stream.prompt, stream.interim = phrases, interim
        return stream

    def _prompt_tokens(self, prompt: Prompt | None) -> list[int]:
        if prompt is None or prompt.empty:
            return list(self.start)
        ids = self.tokenizer.encode(" " + prompt.text, add_special_tokens=False).ids[-MAX_PROMPT_TOKENS:]
        return [self.sot_prev, *ids, *self.start]

    def generate(self, windows: list[np.ndarray], prompts: list[Prompt | None], *, beam_size: int = 1,
                 nbest: int = 1, words: bool = False) -> list[list[Hypothesis]]:
        """Decode a batch of utterances (float32 16 kHz, each at most 30 s) in one call.

        Returns n-best lists, best first (empty text when the model hears no speech). `words` adds word
        times and probabilities (cross-attention alignment)."""
        import ctranslate2

        if not windows:
            return []
        lead = np.zeros(int(self.decoding.lead_pad_s * SAMPLE_RATE), np.float32)
        pad_s = len(lead) / SAMPLE_RATE
        seconds = [len(w) / SAMPLE_RATE for w in windows]
        windows = [np.concatenate([lead, np.asarray(w, np.float32)]) for w in windows]
        frames = max(window_frames(len(w) / SAMPLE_RATE, self.decoding) for w in windows)
        feats = np.stack([self.mel(w, frames) for w in windows])
        sv = ctranslate2.StorageView.from_array(feats)
        tokens = [self._prompt_tokens(p) for p in prompts]
        nbest = max(1, nbest)
        results = self.runtime.generate(
            sv, tokens, beam_size=max(beam_size, nbest), num_hypotheses=nbest, return_scores=True,
            return_no_speech_prob=True, suppress_blank=True,
            # at most ~8 tokens per second of audio: a decoder that loops stops there, not at 448 tokens
            max_length=min(448 - max(len(t) for t in tokens), 16 + int(8 * max(len(w) for w in windows) / SAMPLE_RATE)),
            length_penalty=1.0,
        )
        out: list[list[Hypothesis]] = []
        for i, r in enumerate(results):
            # as openai-whisper: silence when <|nospeech|> is likely and the text is not (mean log-prob < -1)
            if r.no_speech_prob > self.decoding.no_speech_threshold and r.scores[0] < -1.0:
                out.append([Hypothesis("", (), 0.0, 0.0, seconds[i])])
                continue
            hyps = []
            for ids, score in zip(r.sequences_ids, r.scores):
                ids = [t for t in ids if t < self.eot]
                conf = float(np.exp(score)) if score <= 0 else 1.0
                hyps.append(Hypothesis(self.tokenizer.decode(ids).strip(), (), conf, 0.0, seconds[i]))
            out.append(hyps)
        if words:
            for i, r in enumerate(results):
                if out[i][0].text:
                    ids = [t for t in r.sequences_ids[0] if t < self.eot]
                    out[i][0] = self._with_words(out[i][0], feats[i: i + 1], ids, frames, pad_s)
        return out

    def _with_words(self, hyp: Hypothesis, feats: np.ndarray, ids: list[int], frames: int, pad_s: float) -> Hypothesis:
        """Word times from the alignment heads' cross-attention (as openai-whisper's `find_alignment`)."""
        import ctranslate2

        sv = ctranslate2.StorageView.from_array(np.ascontiguousarray(feats))
        res = self.runtime.align(sv, list(self.start), [ids], frames // 2, median_filter_width=7)[0]
        n = len(ids)
        times = [[] for _ in range(n)]
        for t_idx, f_idx in res.alignments:
            if 0 <= t_idx < n:
                times[t_idx].append(max(0.0, f_idx * FRAME_SECONDS - pad_s))
        probs = list(res.text_token_probs) + [0.0] * n
        words, cur = [], []

        def close():
            if cur:
                text = self.tokenizer.decode([ids[k] for k in cur]).strip()
                ts = [x for k in cur for x in times[k]]
                if text:
                    s, e = (min(ts), max(ts) + FRAME_SECONDS) if ts else (0.0, 0.0)
                    words.append(Word(text, s, min(e, hyp.end), float(np.mean([probs[k] for k in cur]))))
                cur.clear()

        for k, tok in enumerate(ids):
            piece = self.tokenizer.id_to_token(tok) or ""
            if piece.startswith("Ġ") and cur:  # byte-level BPE: a leading space starts a word
                close()
            cur.append(k)
        close()
        conf = float(np.mean([w.confidence for w in words])) if words else hyp.confidence
        start_s = words[0].start if words else 0.0
        return Hypothesis(hyp.text, tuple(words), conf, start_s, hyp.end)

    def recognize(self, samples: np.ndarray, nbest: int = 1, phrases: Prompt | None = None, words: bool = True) -> list[Hypothesis]:
        """A whole recording: 30 s windows one after the other, each decoded with beam search."""
        samples = np.asarray(samples, dtype=np.float32)
        step = int(self.decoding.max_utterance_s * SAMPLE_RATE)
        if len(samples) <= step:
            return self.generate([samples], [phrases], beam_size=self.decoding.beam_size, nbest=nbest, words=words)[0]
        parts = []
        for off in range(0, len(samples), step):
            h = self.generate([samples[off: off + step]], [phrases], beam_size=self.decoding.beam_size, words=words)[0][0]
            parts.append(shift(h, off / SAMPLE_RATE))
        return [join(parts)]

    def transcribe(self, samples: np.ndarray) -> Hypothesis:
        return self.recognize(samples)[0]

    def transcribe_file(self, path: str | Path) -> Hypothesis:
        from speechadapt.asr.audio import load_audio

        return self.transcribe(load_audio(path, SAMPLE_RATE))


def shift(h: Hypothesis, seconds: float) -> Hypothesis:
    """The same hypothesis with its times moved by `seconds`."""
    words = tuple(Word(w.word, w.start + seconds, w.end + seconds, w.confidence) for w in h.words)
    return Hypothesis(h.text, words, h.confidence, h.start + seconds, h.end + seconds)


def join(parts: list[Hypothesis]) -> Hypothesis:
    parts = [p for p in parts if p.text] or parts[:1]
    words = tuple(w for p in parts for w in p.words)
    conf = float(np.mean([p.confidence for p in parts])) if parts else 0.0
    return Hypothesis(" ".join(p.text for p in parts).strip(), words, conf, parts[0].start, parts[-1].end)


def load_whisper(folder: Path, card: ModelCard, ref=None, threads: int = 0, store: str | Path | None = None) -> WhisperModel:
    if TOKENIZER not in card.files:
        raise PackageError(f"{folder}: a Whisper package lists {TOKENIZER} in its card")
    return WhisperModel(card, folder, ref, threads, store)


def save_whisper_package(folder: Path, state: dict, hparams: dict, tokenizer_file: Path, *, name: str, version: int = 1,
                         description: str = "", metrics: dict | None = None, lineage: dict | None = None,
                         decoding: dict | None = None, language: str = "en", base: dict | None = None,
                         num_parameters: int = 0) -> ModelCard:
    """Write a Whisper package into `folder` (created): weights (Hugging Face names), tokenizer, card. With
    `base`, `state` holds only the changes to that base (an adapter package, see `package_state`)."""
    from safetensors.torch import save_file

    from speechadapt.asr.package import write_card

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items() if k != "proj_out.weight"}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    shutil.copyfile(tokenizer_file, folder / TOKENIZER)
    return write_card(
        folder, [WEIGHTS, TOKENIZER],
        name=name, version=version, architecture=ARCHITECTURE, hparams=dict(hparams),
        tokenizer={"type": "whisper-bpe", "file": TOKENIZER},
        features={"type": "whisper-log-mel", "n_mels": hparams.get("num_mel_bins", 80), "sample_rate": SAMPLE_RATE},
        sample_rate=SAMPLE_RATE, language=language, description=description, metrics=dict(metrics or {}),
        lineage=dict(lineage or {}), num_parameters=num_parameters or sum(v.numel() for v in state.values()),
        decoding=WhisperDecoding.from_dict(decoding or {}).to_dict(), base=dict(base or {}),
    )
