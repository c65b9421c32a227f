"""The adaptation job spec: one schema for the proto (`speechadapt.v1.JobSpec`), this dataclass and the
CLI's YAML file (same keys). Pure Python: the light client, the server and the Ray job all import it.

    spec = JobSpec.from_yaml("job.yaml")          # unknown keys, wrong types, bad values -> JobSpecError
    msg = spec.to_proto(); JobSpec.from_proto(msg) == spec
    spec.problems()                               # every problem with the values themselves (not the data)

YAML (only `name`, `base_model`, `train_manifest`, `dev_manifest` are required):

    name: base-en-scottish
    base_model: base-en            # or base-en@1
    train_manifest: data/scot/train/manifest.jsonl   # a path the workers can read, or data://<sha256>
    dev_manifest: data/scot/dev/manifest.jsonl
    strategy: auto                 # auto (by architecture and data size) | head | finetune | adapters
    source_replay: 0.2             # default: auto (0.5 of each batch for conformer-CTC bases, 0.25 for Whisper)
    max_epochs: 20
    max_minutes: 10
    search:                        # optional: a small Ray Tune search instead of one run (SearchSpec)
      trials: 4
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechadapt.quote import quote

STRATEGIES = ("auto", "head", "finetune", "adapters")  # auto: chosen by the job (training.adapt.choose_defaults)
DATA_URI = "data://"
TEXT_URI = "text://"  # domain text the server holds, named by the sha256 of its UTF-8 bytes
MAX_DOMAIN_TEXT_BYTES = 4 * 1024 * 1024  # domain_text on the wire (all files together; half the server's 8 MiB message limit)
_SHA = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Learning rate by strategy when the spec gives none (AdamW peak, after warmup).
DEFAULT_LR = {"head": 3e-3, "finetune": 5e-4, "adapters": 2e-3}


MAX_TRIALS = 16


@dataclass
class SearchSpec:
    """`search:` in a job file: trials over strategy, learning rate and source replay, each a Ray Train run on the
    same cluster, scored on target dev WER among checkpoints within the source limit; the best is evaluated,
    gated and published like a single run (training.search)."""

    trials: int = 4  # how many runs (1..MAX_TRIALS)
    budget_minutes: float = 0.0  # 0: each trial trains up to max_minutes; else the whole search's training time
    strategies: list[str] = field(default_factory=list)  # []: by architecture (head + adapters for Whisper)
    learning_rates: list[float] = field(default_factory=list)  # []: each strategy's default x 1, 1/3, 3
    source_replay: list[float] = field(default_factory=list)  # []: the auto share and half of it
    concurrent: int = 0  # trials at once; 0: as many as the cluster's CPUs hold

    def problems(self) -> list[str]:
        p: list[str] = []
        if not 1 <= self.trials <= MAX_TRIALS:
            p.append(f"search.trials {self.trials}: use 1..{MAX_TRIALS}")
        if not 0 <= self.budget_minutes <= 24 * 60:
            p.append(f"search.budget_minutes {self.budget_minutes}: use 0 (none) up to 1440")
        bad = [s for s in self.strategies if s not in STRATEGIES[1:]]
        if bad:
            p.append(f"search.strategies {bad}: use some of {', '.join(STRATEGIES[1:])}")
        if any(not 0 < v <= 1 for v in self.learning_rates):
            p.append(f"search.learning_rates {self.learning_rates}: each in (0, 1]")
        if any(not 0 <= v < 1 for v in self.source_replay):
            p.append(f"search.source_replay {self.source_replay}: each a fraction in [0, 1)")
        if not 0 <= self.concurrent <= 64:
            p.append(f"search.concurrent {self.concurrent}: use 0 (as the cluster allows) up to 64")
        return p


class JobSpecError(ValueError):
    """A job spec that cannot be used; `problems` lists every problem found, each saying what to fix."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid job spec: " + "; ".join(self.problems))


@dataclass
class JobSpec:
    name: str
    base_model: str
    train_manifest: str
    dev_manifest: str
    source_dev_manifest: str = ""  # "": a held-back slice of the base model's source domain
    strategy: str = "auto"  # auto: chosen by the job from the base's architecture and the amount of target audio
    source_replay: float | None = None  # share of each batch drawn from the source domain (against forgetting); None: auto
    max_epochs: int = 30
    max_minutes: float = 10.0
    learning_rate: float | None = None  # None: DEFAULT_LR[strategy]
    batch_size: int = 16  # utterances per worker per step
    augment: bool = True  # SpecAugment (+ speed perturbation of the target data)
    workers: int = 1
    gpus_per_worker: float = 0.0
    seed: int = 0
    max_source_regression: float = 0.02  # promotion gate: largest allowed source WER rise (absolute, 0..1)
    search: SearchSpec | None = None  # a search over strategy / learning rate / replay instead of one run
    # text files of the target domain (one or more sentences a line): the job builds a word LM from them, mixed
    # into the base's LM when it has one. The client sends their text; server records hold text://<sha256>.
    domain_text: list[str] = field(default_factory=list)

    # -- conversions

    @classmethod
    def from_dict(cls, data: dict, where: str = "job spec") -> "JobSpec":
        from speechadapt.config_io import ConfigError, from_dict

        if not isinstance(data, dict):
            raise JobSpecError([f"{where}: expected a mapping of keys to values, got {type(data).__name__}"])
        if isinstance(data.get("domain_text"), str):  # one file: `domain_text: kitchen.txt`
            data = {**data, "domain_text": [data["domain_text"]]}
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and data.get(f.name) in (None, "")]
        if missing:
            raise JobSpecError([f"{where}: missing required key {k!r}" for k in missing])
        try:
            spec = from_dict(cls, data, "")
        except ConfigError as e:
            raise JobSpecError([f"{where}: {e}"]) from None
        spec.strategy = str(spec.strategy).lower()
        if spec.search is not None:
            spec.search.strategies = [str(v).lower() for v in spec.search.strategies]
        problems = spec.problems()
        if problems:
            raise JobSpecError(problems)
        return spec

    @classmethod
    def from_record(cls, data: dict) -> "JobSpec":
        """A spec as `to_dict()` stored it (a job record): nested values (`search`) rebuilt, not checked again."""
        from speechadapt.config_io import from_dict

        return from_dict(cls, data, "")

    @classmethod
    def from_yaml(cls, path: str | Path) -> "JobSpec":
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as e:
            raise JobSpecError([f"cannot read job spec {path}: {e.strerror or e}"]) from None
        except yaml.YAMLError as e:
            raise JobSpecError([f"{path} is not valid YAML: {e}"]) from None
        spec = cls.from_dict(data, str(path)).resolve_paths(path.parent)
        try:
            spec.read_domain_text()  # bad domain text files are the job file's problem, found before any network
        except JobSpecError as e:
            raise JobSpecError([f"{path}: {p}" for p in e.problems]) from None
        return spec

    def resolve_paths(self, base: str | Path) -> "JobSpec":
        """Relative manifest paths taken relative to `base` (the YAML file's folder), made absolute."""
        out = dataclasses.replace(self)
        for key in ("train_manifest", "dev_manifest", "source_dev_manifest"):
            v = getattr(out, key)
            if v and "://" not in v and not Path(v).is_absolute():
                setattr(out, key, str((Path(base) / v).resolve()))
        out.domain_text = [v if "://" in v or Path(v).is_absolute() else str((Path(base) / v).resolve())
                           for v in self.domain_text]
        return out

    def read_domain_text(self) -> str:
        """The text of the `domain_text` files, joined (what `to_proto(domain_text=...)` sends): every file must
        exist, be UTF-8 and hold words, and all together at most MAX_DOMAIN_TEXT_BYTES (JobSpecError lists every
        problem). text:// URIs (the server's copy, as a job record names it) are left to the server."""
        parts, problems, size = [], [], 0
        for v in self.domain_text:
            if v.startswith(TEXT_URI):
                continue
            try:
                raw = Path(v).read_bytes()
            except OSError as e:
                problems.append(f"domain_text {quote(v)}: cannot read it ({e.strerror or e}); give a text file, "
                                "relative to the job file")
                continue
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(f"domain_text {quote(v)}: not UTF-8 text (byte {e.start}); save it as UTF-8")
                continue
            if not re.search(r"[A-Za-z0-9]", text):
                problems.append(f"domain_text {quote(v)}: the file is empty (no words); give sentences of the "
                                "target domain, one or more a line")
                continue
            size += len(raw)
            parts.append(text if text.endswith("\n") else text + "\n")
        if size > MAX_DOMAIN_TEXT_BYTES:
            problems.append(f"domain_text: {size} bytes in all, over the limit of {MAX_DOMAIN_TEXT_BYTES} "
                            f"({MAX_DOMAIN_TEXT_BYTES // 2**20} MiB); keep the most typical sentences")
        if problems:
            raise JobSpecError(problems)
        return "".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_proto(self, domain_text: str = ""):
        """The proto; `domain_text`: the text to send (the client passes `read_domain_text()`). Paths in
        self.domain_text are never sent; a text:// URI goes as domain_text_sha256 (text the server holds)."""
        from speechadapt.v1 import adaptation_pb2 as pb

        msg = pb.JobSpec(
            name=self.name, base_model=self.base_model, train_manifest=self.train_manifest,
            dev_manifest=self.dev_manifest, source_dev_manifest=self.source_dev_manifest,
            strategy=pb.Strategy.Value(self.strategy.upper()) if self.strategy in STRATEGIES[1:] else 0,
            max_epochs=self.max_epochs, max_minutes=self.max_minutes,
            batch_size=self.batch_size, augment=self.augment, workers=self.workers,
            gpus_per_worker=self.gpus_per_worker, seed=self.seed, max_source_regression=self.max_source_regression,
        )
        if self.learning_rate is not None:
            msg.learning_rate = self.learning_rate
        msg.domain_text = domain_text
        uris = [v[len(TEXT_URI):] for v in self.domain_text if v.startswith(TEXT_URI)]
        if uris and not domain_text:
            msg.domain_text_sha256 = uris[0]
        if self.source_replay is not None:
            msg.source_replay = self.source_replay
        if self.search is not None:
            s = self.search
            msg.search.CopyFrom(pb.SearchSpec(
                trials=s.trials, budget_minutes=s.budget_minutes,
                strategies=[pb.Strategy.Value(v.upper()) for v in s.strategies if v in STRATEGIES[1:]],
                learning_rates=s.learning_rates, source_replay=s.source_replay, concurrent=s.concurrent))
        return msg

    @classmethod
    def from_proto(cls, msg) -> "JobSpec":
        """A proto JobSpec (unset optional fields take the defaults); raises JobSpecError listing every problem."""
        from speechadapt.v1 import adaptation_pb2 as pb

        data: dict[str, Any] = {
            "name": msg.name, "base_model": msg.base_model, "train_manifest": msg.train_manifest,
            "dev_manifest": msg.dev_manifest, "source_dev_manifest": msg.source_dev_manifest,
        }

        def strategy(v: int) -> str:  # an unknown enum value (proto3 keeps it) is reported by problems()
            return pb.Strategy.Name(v).lower() if v in pb.Strategy.values() else str(v)

        if msg.strategy != pb.STRATEGY_UNSPECIFIED:
            data["strategy"] = strategy(msg.strategy)
        for key in ("source_replay", "max_epochs", "max_minutes", "learning_rate", "batch_size", "augment",
                    "workers", "gpus_per_worker", "seed", "max_source_regression"):
            if msg.HasField(key):
                v = getattr(msg, key)
                data[key] = round(v, 7) if isinstance(v, float) else v  # float32 on the wire
        if msg.HasField("search"):
            s = msg.search
            data["search"] = {
                "trials": s.trials or SearchSpec.trials, "budget_minutes": round(s.budget_minutes, 7), "concurrent": s.concurrent,
                "strategies": [strategy(v) for v in s.strategies],
                "learning_rates": [round(v, 7) for v in s.learning_rates],
                "source_replay": [round(v, 7) for v in s.source_replay]}
        if msg.domain_text_sha256 and not msg.domain_text:  # a job record, or text the server already holds
            data["domain_text"] = [TEXT_URI + msg.domain_text_sha256]
        return cls.from_dict(data, "spec")

    # -- checks on the values (the data itself is checked by speechadapt.asr.manifest.check_manifest)

    @property
    def lr(self) -> float:
        return self.learning_rate if self.learning_rate is not None else DEFAULT_LR.get(self.strategy, 1e-3)

    def problems(self) -> list[str]:
        p: list[str] = []
        if not _NAME.match(self.name or "") or ".." in self.name:
            p.append(f"name {quote(self.name)}: use letters, digits, '.', '_' or '-' (at most 64 characters)")
        base, _, ver = (self.base_model or "").partition("@")
        if not _NAME.match(base) or ".." in base or (ver and not (ver.isascii() and ver.isdigit() and len(ver) <= 9 and int(ver) > 0)):
            p.append(f"base_model {quote(self.base_model)}: use name or name@N (N a positive integer)")
        for key in ("train_manifest", "dev_manifest", "source_dev_manifest"):
            v = getattr(self, key)
            if v.startswith(DATA_URI) and not _SHA.match(v[len(DATA_URI):]):
                p.append(f"{key} {quote(v)}: a data URI is data://<64 hex digits of sha256> (from UploadData)")
        if self.strategy not in STRATEGIES:
            p.append(f"strategy {quote(self.strategy)}: use one of {', '.join(STRATEGIES)}")
        if self.source_replay is not None and not 0.0 <= self.source_replay < 1.0:
            p.append(f"source_replay {self.source_replay}: use a fraction in [0, 1)")
        if self.max_epochs < 1:
            p.append(f"max_epochs {self.max_epochs}: use at least 1")
        if not 0 < self.max_minutes <= 24 * 60:
            p.append(f"max_minutes {self.max_minutes}: use more than 0 and at most 1440")
        if self.learning_rate is not None and not 0 < self.learning_rate <= 1:
            p.append(f"learning_rate {self.learning_rate}: use a value in (0, 1]")
        if not 1 <= self.batch_size <= 1024:
            p.append(f"batch_size {self.batch_size}: use 1..1024 utterances")
        if not 1 <= self.workers <= 256:
            p.append(f"workers {self.workers}: use 1..256")
        if not 0 <= self.gpus_per_worker <= 64:
            p.append(f"gpus_per_worker {self.gpus_per_worker}: use 0 (CPU) up to 64")
        if not 0 <= self.max_source_regression <= 1:
            p.append(f"max_source_regression {self.max_source_regression}: an absolute WER rise in [0, 1] (0.02 = 2 points)")
        if self.search is not None:
            p += self.search.problems()
        if not isinstance(self.domain_text, list) or not all(isinstance(v, str) and v for v in self.domain_text):
            p.append(f"domain_text {self.domain_text!r}: give a text file or a list of text files")
        else:
            for v in self.domain_text:
                if v.startswith(TEXT_URI) and not _SHA.match(v[len(TEXT_URI):]):
                    p.append(f"domain_text {quote(v)}: a text URI is text://<64 hex digits of sha256>")
                elif "://" in v and not v.startswith(TEXT_URI):
                    p.append(f"domain_text {quote(v)}: give a local text file (the client sends its text)")
        return p
