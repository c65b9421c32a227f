"""Shared fixtures: a tiny model trained on espeak-ng speech, and a real gRPC server on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """tiny@1 in a store, with its train and held-out dev manifests (trains once per session, ~2 min).

    Set SPEECHADAPT_TEST_CACHE=DIR to keep it between runs while developing (CI never does).
    """
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required: apt-get install espeak-ng (make test installs it)")
    from speechadapt.training.tiny import TinyAssets, build

    cache = os.environ.get("SPEECHADAPT_TEST_CACHE")
    if cache and (Path(cache) / "store" / "tiny" / "1" / "model.json").is_file():
        c = Path(cache)
        return TinyAssets(c / "store", c / "corpus" / "train" / "manifest.jsonl", c / "corpus" / "dev" / "manifest.jsonl")
    return build(Path(cache) if cache else tmp_path_factory.mktemp("tiny"))


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

