# speechadapt: `make demo` installs everything and runs the main path end to end; `make test` installs and runs the tests.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEMO_DIR ?= .cache/demo

.PHONY: install system-deps test demo proto proto-check bench bench-transfer bench-transfer-whisper bench-gap clean base-en base-en-ship

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

# Rebuild the base model from nothing (~2 h on 2 cores: ~12 min synthesis, <= 105 min training, benchmarks):
# natural training text (`data text`: train, dev and held-out test splits), the train text spoken by every
# engine (BASE_WEIGHTS: share of the audio per engine, split over its speakers) with speed/pitch variation,
# noise and speed perturbation; a dev set the same way; Ray Train pretraining (training/configs/base-en.yaml);
# benchmark on the test split spoken by espeak-ng variants not in training (and real speech), without the LM;
# a pruned 3-gram LM of the train text attached to the package, its weights tuned on the dev set (`lm tune`);
# benchmark with it; model card.
# Writes everything under BASE_DIR (package: BASE_OUT); `make base-en-ship` then copies it into asr/models/base-en.
# A rerun resumes an interrupted training (BASE_DIR/models/base-en/.runs); delete BASE_DIR/models to start over.
# Smoke run (a few minutes): make base-en BASE_DIR=.cache/base-smoke BASE_HOURS=0.03 BASE_DEV=20 BASE_STEPS=20 \
#     BASE_CHECKPOINT=10 BASE_BENCH="--per-accent 4 --accents en-us,en-gb --no-real"
BASE_DIR ?= .cache/base-en
BASE_OUT ?= $(BASE_DIR)/models/base-en/1
BASE_HOURS ?= 4
BASE_TRAIN_TEXT ?= 40000
BASE_DEV ?= 300
BASE_TEST_TEXT ?= 1000
BASE_ENGINES ?= espeak,flite,festival,piper
BASE_VOICES ?= en-us,en-gb,flite:kal16,flite:awb,flite:rms,flite:slt,festival:kal,festival:ked,festival:slt,piper:joe
BASE_VARIANTS ?= 10
BASE_WEIGHTS ?= espeak=0.5,flite=0.2,festival=0.2,piper=0.1
BASE_STEPS ?= 2200
BASE_MINUTES ?= 105
BASE_CHECKPOINT ?= 200
BASE_LM_PRUNE ?= 0 1 2
BASE_BENCH ?= --per-accent 60
BASE_SPEAK = --engines $(BASE_ENGINES) --voices $(BASE_VOICES) --variants $(BASE_VARIANTS) \
    --engine-weights $(BASE_WEIGHTS)
BASE_TRAIN_SYNTH = --out $(BASE_DIR)/corpus/train $(BASE_SPEAK) --sentences $(BASE_DIR)/text/train.txt \
    --hours $(BASE_HOURS) --seed 1 --noise-snr 15:35 --noise-prob 0.3 --speed-perturb 0.9,1.0,1.1
base-en: install
	@echo "== base-en into $(BASE_OUT): $(BASE_HOURS) h of training speech, $(BASE_STEPS) steps or $(BASE_MINUTES) min"
	$(PY) -m speechadapt.training.corpus_text --out $(BASE_DIR)/text/train.txt --split train \
	    --sentences $(BASE_TRAIN_TEXT) --seed 1 --exclude bench/data/ordinary_sentences.txt
	$(PY) -m speechadapt.training.corpus_text --out $(BASE_DIR)/text/dev.txt --split dev --sentences $(BASE_DEV) \
	    --seed 2 --exclude bench/data/ordinary_sentences.txt
	$(PY) -m speechadapt.training.corpus_text --out $(BASE_DIR)/text/test.txt --split test \
	    --sentences $(BASE_TEST_TEXT) --seed 3 --exclude bench/data/ordinary_sentences.txt
	$(PY) -m speechadapt.training.synth $(BASE_TRAIN_SYNTH) --plan
	$(PY) -m speechadapt.training.synth $(BASE_TRAIN_SYNTH) --quiet
	$(PY) -m speechadapt.training.synth --out $(BASE_DIR)/corpus/dev $(BASE_SPEAK) \
	    --sentences $(BASE_DIR)/text/dev.txt --seed 2 --quiet
	$(PY) -m speechadapt.training.pretrain --config training/configs/base-en.yaml --set \
	    train_manifest=$(BASE_DIR)/corpus/train/manifest.jsonl dev_manifest=$(BASE_DIR)/corpus/dev/manifest.jsonl \
	    out=$(BASE_OUT) overwrite=true train.max_steps=$(BASE_STEPS) train.max_minutes=$(BASE_MINUTES) \
	    checkpoint_every=$(BASE_CHECKPOINT)
	$(PY) bench/base_model.py --model $(BASE_OUT) --train-summary $(BASE_DIR)/corpus/train/summary.json \
	    --test-text $(BASE_DIR)/text/test.txt --workdir $(BASE_DIR)/bench $(BASE_BENCH) \
	    --out $(BASE_DIR)/bench/base_model_no_lm.json
	$(PY) -m speechadapt.client.cli lm build --text $(BASE_DIR)/text/train.txt --order 3 \
	    --prune $(BASE_LM_PRUNE) --out $(BASE_DIR)/lm --attach $(BASE_OUT)
	$(PY) -m speechadapt.client.cli lm tune --model $(BASE_OUT) --dev $(BASE_DIR)/corpus/dev/manifest.jsonl
	$(PY) bench/base_model.py --model $(BASE_OUT) --train-summary $(BASE_DIR)/corpus/train/summary.json \
	    --test-text $(BASE_DIR)/text/test.txt --workdir $(BASE_DIR)/bench $(BASE_BENCH) \
	    --out $(BASE_DIR)/bench/base_model.json
	$(PY) -m speechadapt.training.model_card $(BASE_OUT) --corpus $(BASE_DIR)/corpus/train \
	    --dev-corpus $(BASE_DIR)/corpus/dev --bench $(BASE_DIR)/bench/base_model.json \
	    --bench-no-lm $(BASE_DIR)/bench/base_model_no_lm.json --reproduce "make base-en"
	@du -sh $(BASE_OUT) && echo "== done: $(BASE_OUT); ship it with: make base-en-ship BASE_DIR=$(BASE_DIR)"

# Only after a full `make base-en`: the package becomes asr/models/base-en (package data: at most 20 MiB in the
# wheel, deflated, lm/ included) and its benchmarks bench/results/base_model*.json.
base-en-ship:
	@test -f $(BASE_OUT)/model.json -a -f $(BASE_DIR)/bench/base_model.json || { echo "no finished package in $(BASE_OUT): run make base-en first"; exit 2; }
	@$(PY) -c 'import sys; from speechadapt.asr.package import SHIPPED_LIMIT_BYTES as L, shipped_bytes as b; n = b(sys.argv[1]); sys.exit(0) if n <= L else sys.exit(f"{sys.argv[1]} adds {n} bytes to the wheel (deflated), over the 20 MiB package-data limit: prune the LM harder (BASE_LM_PRUNE)")' $(BASE_OUT)
	rm -rf asr/models/base-en && mkdir -p asr/models && cp -r $(BASE_OUT) asr/models/base-en
	cp $(BASE_DIR)/bench/base_model.json bench/results/base_model.json
	cp $(BASE_DIR)/bench/base_model_no_lm.json bench/results/base_model_no_lm.json

# Benchmarks (results: bench/results/*.json and the README). bench-transfer (the README's base-en curve: 1/5/10 min,
# finetune, adapters and the default job) takes 42 min on 2 cores; `bench/transfer_curve.py` with no options adds
# head, 2 min, scratch and an FSDD row (about 105 min). bench-transfer-whisper takes 76 min, bench-gap 24 min.
bench: install
	$(PY) bench/base_model.py --model base-en --per-accent 30
	$(PY) bench/phrase_boost.py
	$(PY) bench/streaming.py

bench-transfer: install
	$(PY) bench/transfer_curve.py --sizes 1,5,10 --strategies finetune,adapters --no-scratch --no-fsdd

bench-transfer-whisper: install
	$(PY) bench/transfer_curve.py --model whisper-tiny-en

bench-gap: install
	$(PY) bench/transfer_gap.py

clean:
	rm -rf .cache build *.egg-info .pytest_cache
