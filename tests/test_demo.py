"""`make demo` (deploy/demo.sh): the script parses, its WER helper scores like the evaluation code, and (slow) a
shrunken run goes end to end: server, synthesized data, an adaptation job on the server's own Ray head, the
job record, held-out utterances streamed to the models, everything stopped afterwards."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "deploy" / "demo.sh"


def _compare_module():
    spec = importlib.util.spec_from_file_location("demo_compare", ROOT / "deploy" / "demo_compare.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_demo_script_parses():
    subprocess.run(["bash", "-n", str(DEMO)], check=True)


def test_compare_helper_scores_like_the_evaluation_code(tmp_path):
    from speechadapt.asr.evaluation import error_rates

    mod = _compare_module()
    refs, hyps = ["Students got the", "which will trade page"], ["students got a", "which we trade page his"]
    assert mod.wer(refs, hyps) == pytest.approx(error_rates(refs, hyps)[0])
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "a.wav", "text": "hi"}) + "\n\n")
    assert mod.read_manifest(tmp_path / "m.jsonl") == [{"audio": str(tmp_path / "a.wav"), "text": "hi"}]


@pytest.mark.slow
def test_demo_runs_end_to_end_small(tmp_path):
    env = dict(os.environ, PY=sys.executable, DEMO_DIR=str(tmp_path / "demo"), DEMO_TRAIN_HOURS="0.012",
               DEMO_DEV_COUNT="6", DEMO_SOURCE_DEV_COUNT="6", DEMO_TEST_COUNT="3", DEMO_SHOW="1", DEMO_EPOCHS="1",
               DEMO_TRAIN_MINUTES="0.5", DEMO_WORKERS="1", DEMO_TIMEOUT="400")
    proc = subprocess.run(["bash", str(DEMO)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    record = json.loads((tmp_path / "demo" / "job.json").read_text())
    assert record["state"] == "SUCCEEDED" and record["metrics"]["base_target_wer"] is not None, record
    assert "train  step" in out  # the --wait progress
    if record["promoted"]:
        ref = f"{record['model']}@{record['version']}"
        assert f"promoted: {ref}" in out and re.search(rf"adapted {re.escape(ref)} +WER", out), out[-3000:]
    else:
        assert "NOT promoted: " + record["reason"] in out
    assert re.search(r"all 3 held-out utterances .*\n  base base-en@1 +WER +\d", out), out[-3000:]
    assert "== stopping the server (and its Ray head) ==" in out
    head = tmp_path / "demo" / "state" / "ray" / "head.json"
    assert not head.exists(), "the server left its Ray head running"
