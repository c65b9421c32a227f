# speechadapt: `make demo` installs everything and runs the main path end to end; `make test` installs and runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= .cache/demo

.PHONY: install system-deps test demo proto proto-check bench bench-transfer bench-transfer-whisper clean base-en

# espeak-ng, flite and festival (+ its kal, ked and slt voices) make synthetic speech (`data synth --engines`);
# fortunes (BSD) and wordnet-base (WordNet 3.0 licence) give natural English training text (`data text`).
FESTVOX := /usr/share/festival/voices
system-deps:
	@{ command -v espeak-ng && test -f /usr/share/dict/words && command -v flite && command -v festival && test -d $(FESTVOX)/english/kal_diphone && test -d $(FESTVOX)/english/ked_diphone && test -d $(FESTVOX)/us/cmu_us_slt_arctic_hts && test -f /usr/share/games/fortunes/wisdom && test -f /usr/share/wordnet/data.noun; } >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng wamerican flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts fortunes wordnet-base; }

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

install: system-deps $(VENV)/.installed

proto: install
	$(PY) protos/gen.py

proto-check: install
	$(PY) protos/gen.py --check

test: install
	$(PY) -m pytest -q -ra --durations=25 -n 2 --dist loadfile

# The main path end to end (deploy/demo.sh, 8-9 min measured on a busy 2-core machine): server, ~5 min of synthesized en-gb-scotland
# speech, an adaptation job on the server's local Ray head, held-out utterances streamed to base and adapted
# model. Outputs in $(DEMO_DIR); DEMO_* variables (see the script) change the accent, sizes and budget.
demo: install
	DEMO_DIR=$(DEMO_DIR) PY=$(PY) bash deploy/demo.sh

# Rebuild the shipped base model from nothing (~90 min on 2 cores): natural training text (`data text`: train, dev
# and held-out test splits), corpus, Ray Train pretraining, benchmark on the test split,
# model card; then copies the package into asr/models/base-en (package data).
BASE_DIR ?= .cache/base-en
base-en: install
	$(PY) -m speechadapt.training.corpus_text --out $(BASE_DIR)/text/train.txt --split train --sentences 40000 \
	    --seed 1 --exclude bench/data/ordinary_sentences.txt
	$(PY) -m speechadapt.training.corpus_text --out $(BASE_DIR)/text/dev.txt --split dev --sentences 300 --seed 2 \
	    --exclude bench/data/ordinary_sentences.txt
	$(PY) -m speechadapt.training.corpus_text --out $(BASE_DIR)/text/test.txt --split test --sentences 1000 --seed 3 \
	    --exclude bench/data/ordinary_sentences.txt
	$(PY) -m speechadapt.training.synth --out $(BASE_DIR)/corpus/train --voices en-us,en-gb --variants 10 \
	    --sentences $(BASE_DIR)/text/train.txt --hours 3.5 --seed 1 --noise-snr 15:35 --noise-prob 0.3 \
	    --speed-perturb 0.9,1.0,1.1
	$(PY) -m speechadapt.training.synth --out $(BASE_DIR)/corpus/dev --voices en-us,en-gb --variants 10 \
	    --sentences $(BASE_DIR)/text/dev.txt --seed 2
	$(PY) -m speechadapt.training.pretrain --config training/configs/base-en.yaml
	$(PY) bench/base_model.py --model models/base-en/1 --train-summary $(BASE_DIR)/corpus/train/summary.json \
	    --test-text $(BASE_DIR)/text/test.txt --out bench/results/base_model.json
	$(PY) -m speechadapt.training.model_card models/base-en/1 --corpus $(BASE_DIR)/corpus/train \
	    --dev-corpus $(BASE_DIR)/corpus/dev --bench bench/results/base_model.json --reproduce "make base-en"
	rm -rf asr/models/base-en && mkdir -p asr/models/base-en && cp models/base-en/1/* asr/models/base-en/

# Benchmarks (results: bench/results/*.json and the README). transfer_curve takes about 70 min on 2 cores
# (+ ~30 min for its default-job rows), its Whisper run (bench-transfer-whisper) about 90 min.
bench: install
	$(PY) bench/base_model.py --model base-en --per-accent 30
	$(PY) bench/phrase_boost.py
	$(PY) bench/streaming.py

bench-transfer: install
	$(PY) bench/transfer_curve.py

bench-transfer-whisper: install
	$(PY) bench/transfer_curve.py --model whisper-tiny-en

clean:
	rm -rf .cache build *.egg-info .pytest_cache
