"""The third architecture: torchaudio wav2vec2 / HuBERT with a CTC head ("wav2vec2-ctc").

Import reads the weights torchaudio's pipelines load (`WAV2VEC2_ASR_BASE_960H`'s .pth and the like: a plain
state dict of `torchaudio.models.wav2vec2_model(...)`) with torch's weights-only loader, infers the
`wav2vec2_model` arguments from tensor shapes and key names, and stores the weights (torchaudio's names) as
safetensors; the card's `hparams` are those arguments, its tokenizer the CTC labels. What a state dict does not
record follows torchaudio's bundles: conv strides by kernel (10 -> 5, 3 -> 2, 2 -> 2), attention heads
min(16, embed_dim // 64), pre-norm transformer (`encoder_layer_norm_first`) and input normalisation exactly
for the `layer_norm` feature extractor (the large LV60K / XLSR / HuBERT models).

Serving runs the torch model on CPU: logits, then greedy CTC (word times from 20 ms frames), or the beam
search of `speechadapt.asr.beam` for n-best lists and phrases. Streams are `WhisperStream`s: the growing
utterance is re-decoded every `interim_step_s` (bidirectional attention has no cheaper streaming).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from speechadapt.asr.beam import BeamConfig, BeamDecoder, Phrase, parse_phrases
from speechadapt.asr.decoding import Hypothesis, greedy_decode
from speechadapt.asr.importers import ImportError_
from speechadapt.asr.package import WEIGHTS, ModelCard, PackageError, sha256_file
from speechadapt.asr.text import CharTokenizer

ARCHITECTURE = "wav2vec2-ctc"
SOURCE_FORMAT = "torchaudio-wav2vec2"
SAMPLE_RATE = 16000
# torchaudio's English labels of the WAV2VEC2_ASR_* / HUBERT_ASR_* bundles: CTC blank, word separator, letters
EN_LABELS = ("-", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R", "D", "L", "U", "M", "W", "C", "F", "G", "Y", "P",
             "B", "V", "K", "'", "X", "J", "Q", "Z")
FAIRSEQ_UNUSED_ROWS = (1, 2, 3)  # <pad>, </s>, <unk> of fairseq's dictionary: torchaudio's ASR bundles drop them
STRIDES = {10: 5, 3: 2, 2: 2}  # conv kernel -> stride in every wav2vec2 / HuBERT feature extractor
PREFIX = "feature_extractor.conv_layers"
LAYERS = "encoder.transformer.layers"
POS_CONV = "encoder.transformer.pos_conv_embed.conv"
HPARAM_KEYS = (
    "extractor_mode", "extractor_conv_layer_config", "extractor_conv_bias", "encoder_embed_dim",
    "encoder_projection_dropout", "encoder_pos_conv_kernel", "encoder_pos_conv_groups", "encoder_num_layers",
    "encoder_num_heads", "encoder_attention_dropout", "encoder_ff_interm_features", "encoder_ff_interm_dropout",
    "encoder_dropout", "encoder_layer_norm_first", "encoder_layer_drop", "aux_num_out",
)


@dataclass(frozen=True)
class Wav2Vec2Decoding:
    """How a wav2vec2 package is decoded when served (the card's `decoding`)."""

    beam_size: int = 1  # finals: 1 = greedy CTC unless n-best or phrases ask for the beam search (then 50)
    interim_step_s: float = 1.0  # streaming: re-decode the growing utterance after this much new audio
    max_utterance_s: float = 30.0  # streaming: longest utterance; whole recordings are decoded in such windows

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Wav2Vec2Decoding":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown wav2vec2 decoding options: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class Wav2Vec2Import:
    """A checkpoint read by `from_torchaudio`, ready for `write_package`."""

    state: dict  # torchaudio parameter names -> tensors, as `build_torch(hparams)` names them
    hparams: dict  # torchaudio.models.wav2vec2_model arguments
    labels: tuple[str, ...]
    lineage: dict
    description: str


# ---------------------------------------------------------------------------------------------- import

def read_labels(path: Path | None) -> tuple[str, ...]:
    """One label per line (blank first, then the word separator '|'), or torchaudio's English set."""
    if path is None:
        return EN_LABELS
    try:
        labels = tuple(line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError) as e:
        raise ImportError_(f"cannot read labels file {path}: {e}") from e
    return labels


def tokenizer_for(labels: tuple[str, ...], where: str) -> CharTokenizer:
    """CTC labels -> our character tokenizer (blank, space, lowercase characters). PackageError if they do not fit."""
    if len(labels) < 3 or labels[1] != "|":
        raise ImportError_(f"{where}: labels must be the CTC blank, then the word separator '|', then the characters "
                     f"(got {list(labels[:3])}...)")
    chars = [lab.lower() for lab in labels[2:]]
    bad = [lab for lab, c in zip(labels[2:], chars) if len(c) != 1 or c.isspace() or c in "|-"]
    if bad:
        raise ImportError_(f"{where}: labels after '|' must be single characters other than '|', '-' and spaces: "
                           f"{bad[:5]}")
    if len(set(chars)) != len(chars):
        raise ImportError_(f"{where}: labels repeat a character (case-insensitively)")
    return CharTokenizer(("<blank>", " ", *chars))


def _shape(ckpt: dict, key: str, path: Path) -> tuple[int, ...]:
    if key not in ckpt:
        raise ImportError_(f"{path} lacks {key}: not a torchaudio wav2vec2 / HuBERT state dict")
    return tuple(ckpt[key].shape)


def infer_hparams(ckpt: dict, path: Path) -> dict:
    """The `torchaudio.models.wav2vec2_model` arguments of a state dict (dropouts 0: inference)."""
    conv = []
    while f"{PREFIX}.{len(conv)}.conv.weight" in ckpt:
        out_ch, in_ch, kernel = _shape(ckpt, f"{PREFIX}.{len(conv)}.conv.weight", path)
        if kernel not in STRIDES:
            raise ImportError_(f"{path}: conv layer {len(conv)} has kernel {kernel}; the stride is only known for "
                         f"kernels {sorted(STRIDES)} (torchaudio's wav2vec2 / HuBERT extractors)")
        conv.append((out_ch, kernel, STRIDES[kernel]))
    if not conv:
        raise ImportError_(f"{path} is not a torchaudio wav2vec2 / HuBERT state dict (no {PREFIX}.0.conv.weight)")
    if any(".rel_attn_embed." in k for k in ckpt):
        raise ImportError_(f"{path} is a WavLM state dict; only wav2vec2 / HuBERT are supported")
    embed = _shape(ckpt, "encoder.feature_projection.projection.weight", path)[0]
    n_layers = 0
    while f"{LAYERS}.{n_layers}.attention.q_proj.weight" in ckpt:
        n_layers += 1
    if n_layers == 0:
        raise ImportError_(f"{path} lacks {LAYERS}.0.attention.q_proj.weight: "
                           "not a torchaudio wav2vec2 / HuBERT state dict")
    pos = next((ckpt[f"{POS_CONV}.{n}"] for n in ("parametrizations.weight.original1", "weight_v", "weight")
                if f"{POS_CONV}.{n}" in ckpt), None)
    if pos is None:
        raise ImportError_(f"{path} lacks the positional convolution {POS_CONV}.weight_v")
    if "aux.weight" not in ckpt:
        raise ImportError_(f"{path} has no CTC head (aux.weight): a pretrained model, "
                           "not one fine-tuned for recognition")
    mode = "layer_norm" if f"{PREFIX}.1.layer_norm.weight" in ckpt else "group_norm"
    heads = max(1, min(16, embed // 64))
    if embed % heads:
        raise ImportError_(f"{path}: embedding width {embed} does not split into {heads} attention heads")
    return {
        "extractor_mode": mode,
        "extractor_conv_layer_config": [list(c) for c in conv],
        "extractor_conv_bias": f"{PREFIX}.0.conv.bias" in ckpt,
        "encoder_embed_dim": int(embed),
        "encoder_projection_dropout": 0.0,
        "encoder_pos_conv_kernel": int(pos.shape[2]),
        "encoder_pos_conv_groups": int(embed // pos.shape[1]),
        "encoder_num_layers": n_layers,
        "encoder_num_heads": heads,
        "encoder_attention_dropout": 0.0,
        "encoder_ff_interm_features": int(_shape(ckpt, f"{LAYERS}.0.feed_forward.intermediate_dense.weight", path)[0]),
        "encoder_ff_interm_dropout": 0.0,
        "encoder_dropout": 0.0,
        "encoder_layer_norm_first": mode == "layer_norm",
        "encoder_layer_drop": 0.0,
        "aux_num_out": int(ckpt["aux.weight"].shape[0]),
    }


def from_torchaudio(path: Path, ckpt, labels: Path | None) -> Wav2Vec2Import:
    """`ckpt` (what `torch.load(path, weights_only=True)` gave) -> an import; ImportError_ when it is not a
    torchaudio wav2vec2 / HuBERT CTC state dict or its labels do not fit its CTC head."""
    path = Path(path)
    if not isinstance(ckpt, dict) or not ckpt or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in ckpt.items()):
        raise ImportError_(f"{path} is neither an openai-whisper checkpoint nor a torchaudio wav2vec2 state dict "
                           "(a dict of parameter names to tensors)")
    hparams = infer_hparams(ckpt, path)
    names = read_labels(labels)
    where = str(labels) if labels else "torchaudio's English labels"
    tokenizer_for(names, where)
    ckpt, rows, lineage_extra = dict(ckpt), hparams["aux_num_out"], {}
    if labels is None and rows == len(names) + len(FAIRSEQ_UNUSED_ROWS):  # fairseq's head, as torchaudio serves it
        keep = [i for i in range(rows) if i not in FAIRSEQ_UNUSED_ROWS]
        ckpt["aux.weight"], ckpt["aux.bias"] = ckpt["aux.weight"][keep], ckpt["aux.bias"][keep]
        hparams["aux_num_out"], lineage_extra = len(keep), {"dropped_outputs": list(FAIRSEQ_UNUSED_ROWS)}
    elif rows != len(names):
        raise ImportError_(f"{path}: the CTC head has {rows} outputs but {where} has {len(names)} labels; "
                           "pass a labels file (--labels) with one label per output")
    pos_w = f"{POS_CONV}.weight"
    if pos_w in ckpt:  # weight norm removed (e.g. a scripted model): any weight is its own norm times direction
        w = ckpt.pop(pos_w)
        ckpt[f"{POS_CONV}.weight_g"], ckpt[f"{POS_CONV}.weight_v"] = torch.norm_except_dim(w, 2, 2), w
    try:
        net = build_torch(hparams, ckpt)
    except PackageError as e:
        raise ImportError_(f"{path}: {e}") from e
    state = {k: v.detach().to("cpu").contiguous() for k, v in net.state_dict().items()}
    lineage = {"source": str(path), "format": SOURCE_FORMAT, "source_sha256": sha256_file(path),
               "labels": str(labels) if labels else "torchaudio-en", **lineage_extra}
    return Wav2Vec2Import(state, hparams, names, lineage, "wav2vec2 / HuBERT CTC imported from torchaudio weights")


def write_package(folder: Path, src: Wav2Vec2Import, *, name: str, version: int = 1, description: str = "",
                  decoding: dict | None = None) -> ModelCard:
    """Write a wav2vec2-ctc package into `folder` (created): weights.safetensors and the card."""
    from safetensors.torch import save_file

    from speechadapt.asr.package import write_card

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(src.state, str(folder / WEIGHTS), metadata={"format": "pt"})
    return write_card(
        folder, [WEIGHTS], name=name, version=version, architecture=ARCHITECTURE, hparams=dict(src.hparams),
        tokenizer={"type": "ctc-labels", "labels": list(src.labels)},
        features={"type": "waveform", "sample_rate": SAMPLE_RATE,
                  "normalize": src.hparams["extractor_mode"] == "layer_norm"},
        sample_rate=SAMPLE_RATE, language="en", description=description or src.description,
        lineage=dict(src.lineage), num_parameters=sum(v.numel() for v in src.state.values()),
        decoding=Wav2Vec2Decoding.from_dict(decoding or {}).to_dict(),
    )


# ----------------------------------------------------------------------------------------------- torch

def build_torch(hparams: dict, state: dict | None = None):
    """torchaudio's `Wav2Vec2Model` (eval mode) for a card's hparams, with `state` loaded strictly."""
    from torchaudio.models import wav2vec2_model

    unknown = set(hparams) - set(HPARAM_KEYS)
    if unknown:
        raise PackageError(f"unknown wav2vec2 hparams {sorted(unknown)}")
    try:
        kwargs = dict(hparams, extractor_conv_layer_config=[tuple(c) for c in hparams["extractor_conv_layer_config"]])
        net = wav2vec2_model(**kwargs)
    except (KeyError, TypeError, ValueError) as e:
        raise PackageError(f"wav2vec2 hparams do not describe a model: {e}") from e
    if state is not None:
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise PackageError(f"weights do not fit the wav2vec2 architecture: {' '.join(str(e).split())[:400]}") from e
    return net.eval()


def load_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(Path(folder) / WEIGHTS))
    except Exception as e:  # safetensors raises its own error types for malformed files
        raise PackageError(f"{Path(folder) / WEIGHTS} is not a valid safetensors file: {e}") from e


# ----------------------------------------------------------------------------------------------- model

class Wav2Vec2Model:
    """A loaded wav2vec2-ctc package: the same calls as `AsrModel` and `WhisperModel`."""

    architecture = ARCHITECTURE
    sample_rate = SAMPLE_RATE

    def __init__(self, card: ModelCard, folder: Path, ref=None, device: str = "cpu"):
        self.card, self.folder, self.ref, self.device = card, Path(folder), ref, device
        if card.tokenizer.get("type") != "ctc-labels":
            raise PackageError(f"{self.folder}: a wav2vec2-ctc package has a 'ctc-labels' tokenizer")
        try:
            self.tokenizer = tokenizer_for(tuple(card.tokenizer["labels"]), str(self.folder))
            self.decoding = Wav2Vec2Decoding.from_dict(card.decoding)
        except (KeyError, TypeError, ValueError) as e:
            raise PackageError(f"{self.folder}: bad card: {e}") from e
        self.net = build_torch(card.hparams, load_state(self.folder)).to(device)
        if card.hparams.get("aux_num_out") != len(self.tokenizer):
            raise PackageError(f"{self.folder}: {len(self.tokenizer)} labels for "
                               f"{card.hparams.get('aux_num_out')} outputs")
        self.normalize = bool(card.features.get("normalize", card.hparams["extractor_mode"] == "layer_norm"))
        conv = card.hparams["extractor_conv_layer_config"]
        self.frame_seconds = math.prod(s for _, _, s in conv) / SAMPLE_RATE  # 0.02 for every torchaudio bundle
        self.min_samples = 1  # receptive field of the feature extractor: shorter audio gives no frame
        for _, k, s in reversed(conv):
            self.min_samples = (self.min_samples - 1) * s + k
        size = self.decoding.beam_size if self.decoding.beam_size > 1 else BeamConfig.beam_size
        self.beam = BeamDecoder(self.tokenizer, None, BeamConfig(beam_size=size))

    @property
    def name(self) -> str:
        return str(self.ref) if self.ref else f"{self.card.name}@{self.card.version}"

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in list(self.net.parameters()) + list(self.net.buffers()))

    def parse_phrases(self, contexts) -> tuple[Phrase, ...]:
        """speech_contexts -> phrases for the beam search. Raises ValueError naming every bad phrase."""
        return parse_phrases(contexts, self.tokenizer)

    @torch.inference_mode()
    def logits(self, samples: np.ndarray) -> torch.Tensor:
        """float32 mono 16 kHz -> (frames, labels). Normalised first as torchaudio's bundles do (layer_norm
        extractors: zero mean, unit variance over the utterance)."""
        x = torch.as_tensor(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device)[None]
        if x.shape[1] < self.min_samples:
            return torch.zeros(0, len(self.tokenizer))
        if self.normalize:
            x = torch.nn.functional.layer_norm(x, x.shape)
        return self.net(x)[0][0].float().cpu()

    def decode(self, logits: torch.Tensor, nbest: int = 1, phrases: tuple[Phrase, ...] = (),
               beam_size: int = 1) -> list[Hypothesis]:
        """Greedy CTC, or the beam search when n-best lists, phrases or `beam_size` > 1 ask for it."""
        if nbest <= 1 and not phrases and beam_size <= 1:
            return [greedy_decode(logits, self.tokenizer, self.frame_seconds)]
        return self.beam.decode(logits, self.frame_seconds, 0, nbest, tuple(phrases))

    def generate(self, windows: list[np.ndarray], prompts: list, *, beam_size: int = 1, nbest: int = 1,
                 words: bool = False) -> list[list[Hypothesis]]:
        """Decode utterances one by one (as `WhisperModel.generate`, so `WhisperStream` drives this model).
        `prompts` are each window's phrases (or None); word times come with every hypothesis."""
        return [self.decode(self.logits(w), nbest, tuple(p or ()), beam_size) for w, p in zip(windows, prompts)]

    def recognize(self, samples: np.ndarray, nbest: int = 1, phrases: tuple[Phrase, ...] = ()) -> list[Hypothesis]:
        """A whole recording, in `max_utterance_s` windows one after the other."""
        from speechadapt.asr.whisper import join, shift

        samples = np.asarray(samples, dtype=np.float32)
        step = int(self.decoding.max_utterance_s * SAMPLE_RATE)
        if len(samples) <= step:
            return self.decode(self.logits(samples), nbest, phrases, self.decoding.beam_size)
        parts = [shift(self.decode(self.logits(samples[off: off + step]), 1, phrases, self.decoding.beam_size)[0],
                       off / SAMPLE_RATE) for off in range(0, len(samples), step)]
        return [join(parts)]

    def transcribe(self, samples: np.ndarray) -> Hypothesis:
        return self.recognize(samples)[0]

    def transcribe_file(self, path: str | Path) -> Hypothesis:
        from speechadapt.asr.audio import load_audio

        return self.transcribe(load_audio(path, SAMPLE_RATE))

    def new_stream(self, input_rate: int, endpoint, phrases: tuple[Phrase, ...] = (), interim: bool = True):
        """A stream that re-decodes the growing utterance (`WhisperStream`); `phrases` apply to every decode."""
        from speechadapt.asr.whisper_stream import WhisperStream

        stream = WhisperStream(self, input_rate, endpoint)
        stream.prompt, stream.interim = tuple(phrases) or None, interim
        return stream


def load_wav2vec2(folder: Path, card: ModelCard, ref=None, device: str = "cpu") -> Wav2Vec2Model:
    return Wav2Vec2Model(card, folder, ref, device)
