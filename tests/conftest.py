"""Shared fixtures: a tiny model trained on espeak-ng speech, and a real gRPC server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_cache(tmp_path_factory) -> Path:
    """Where session data is built once for every pytest-xdist worker of this run: SPEECHADAPT_TEST_CACHE when set
    (kept between runs while developing; CI never sets it), else a folder beside the workers' own temp folders."""
    cache = os.environ.get("SPEECHADAPT_TEST_CACHE")
    if cache:
        return Path(cache)
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"


def built_once(cache: Path, name: str):
    """A lock held while `name` is built in `cache`: the first worker builds it, the others wait, then reuse it."""
    from filelock import FileLock

    cache.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache / f".{name}.lock"))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny@1 in a store, with its train and held-out dev manifests (trains once per run, ~2 min, whatever the
    number of workers)."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required: apt-get install espeak-ng (make test installs it)")
    from speechadapt.training.tiny import TinyAssets, build

    c = shared_cache(tmp_path_factory)
    with built_once(c, "tiny"):
        if (c / "store" / "tiny" / "1" / "model.json").is_file():
            return TinyAssets(c / "store", c / "corpus" / "train" / "manifest.jsonl", c / "corpus" / "dev" / "manifest.jsonl")
        return build(c)


@pytest.fixture(scope="session")
def dev_utterances(tiny):
    """[(int16 samples at 16 kHz, reference text)] of held-out sentences."""
    out = []
    for line in tiny.dev_manifest.read_text().splitlines():
        d = json.loads(line)
        samples, rate = sf.read(tiny.dev_manifest.parent / d["audio"], dtype="int16")
        assert rate == 16000
        out.append((samples, d["text"]))
    return out


@pytest.fixture(scope="session")
def clean_utterances(tiny, dev_utterances):
    """Held-out utterances the model gets exactly right at 16 kHz: for tests about transport, not accuracy."""
    from speechadapt.asr import load_model

    model = load_model("tiny", store=tiny.store)
    clean = [(s, t) for s, t in dev_utterances if model.transcribe(s.astype(np.float32) / 32768).text == t]
    assert len(clean) >= 4, "the tiny model got fewer than 4 held-out utterances right"
    return clean


@pytest.fixture(scope="session")
def speech(tmp_path_factory) -> Path:
    """One synthesized sentence from base-en's vocabulary (WAV, 16 kHz)."""
    from speechadapt.training.synth import SynthConfig, synthesize

    out = tmp_path_factory.mktemp("speech")
    synthesize(SynthConfig(out_dir=out, voices=["en-us"], variants=["m3"], count=1, vocab_size=1000, seed=5, quiet=True))
    return out / json.loads((out / "manifest.jsonl").read_text().splitlines()[0])["audio"]


class ServerThread:
    """A SpeechServer on 127.0.0.1 with its own event loop in a thread."""

    def __init__(self, **config):
        from speechadapt.server.app import ServerConfig, SpeechServer

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = SpeechServer(ServerConfig(host="127.0.0.1", port=0, **config))
        self.port = self.call(self.server.start())
        self.address = f"127.0.0.1:{self.port}"

    def call(self, coro, timeout=120):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.call(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="session")
def scot(tiny, tmp_path_factory):
    """A small target-accent set: tiny's vocabulary spoken by espeak-ng's Scottish English voice (80 train and 20
    dev utterances; {"train": manifest, "dev": manifest}). Kept in SPEECHADAPT_TEST_CACHE when set."""
    from speechadapt.training.synth import SynthConfig, synthesize
    from speechadapt.training.tiny import _sentences

    cache = shared_cache(tmp_path_factory)
    out = cache / "scot"
    manifests = {}
    with built_once(cache, "scot"):
        for split, count, seed in (("train", 80, 11), ("dev", 20, 12)):
            manifest = out / split / "manifest.jsonl"
            if not manifest.is_file():
                out.mkdir(parents=True, exist_ok=True)
                sentences = _sentences(out / f"{split}.txt", count, seed)
                synthesize(SynthConfig(out_dir=out / split, voices=["en-gb-scotland"],
                                       variants=["none", "m1", "f2", "m3", "f4"], sentences_file=sentences,
                                       count=count, seed=seed, quiet=True))
            manifests[split] = manifest
    return manifests


@pytest.fixture(scope="session")
def server(tiny):
    srv = ServerThread(model_store=tiny.store, default_model="tiny")
    yield srv
    srv.stop()


@pytest.fixture
def make_server(tiny):
    """Start extra servers with their own settings; stopped after the test."""
    started = []

    def make(**config):
        config.setdefault("model_store", tiny.store)
        config.setdefault("default_model", "tiny")
        srv = ServerThread(**config)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()


def free_port() -> int:
    """A loopback port nothing listens on (e.g. a Ray address whose jobs fail at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`speechadapt serve ARGS` in a subprocess on 127.0.0.1 (`port` 0: a free one), stderr appended to `log`.
    `address` once it listens; `kill()` is kill -9. Leaving a `with` block kills it if it still runs."""

    def __init__(self, log: Path, *args, port: int = 0):
        self.log = Path(log)
        cmd = [sys.executable, "-m", "speechadapt.client.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               *map(str, args)]
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # never someone else's cluster
        with open(self.log, "a") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.kill()
            pytest.fail(f"serve did not start (exit {self.proc.returncode}):\n{self.log_text()[-6000:]}")
        self.address = line.split()[-1]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """The exit code; fails the test (with the log) if it still runs after `timeout` s."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"serve still runs {timeout:g} s later:\n{self.log_text()[-6000:]}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc.stdout.close()

    def __enter__(self) -> "ServeProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()


def wait_for(pred, timeout: float = 60.0, every: float = 0.2, what: str = "a condition"):
    """Poll `pred()` until it returns something true (returned); fails the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def with_silence(utterances, gap_s=1.2, rate=16000):
    """Concatenate int16 utterances with silence between and after them."""
    gap = np.zeros(int(gap_s * rate), dtype=np.int16)
    parts = []
    for samples, _ in utterances:
        parts += [samples, gap]
    return np.concatenate(parts)


def shared_data(*parts) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real speech lives in ../shared/data)")
    return path

