#!/usr/bin/env bash
# `make demo`: serve the shipped base model (base-en) from an empty model store, stream a sentence spoken
# by an espeak-ng speaker the model never heard at real-time pace, and print interim and final transcripts.
set -euo pipefail
PY=${PY:-.venv/bin/python}
SA=$(dirname "$PY")/speechadapt
DEMO_DIR=${DEMO_DIR:-.cache/demo}
mkdir -p "$DEMO_DIR/store"

echo "== starting the server (empty model store: the built-in base-en model serves) =="
LOG="$DEMO_DIR/server.log"
"$SA" serve --host 127.0.0.1 --port 0 --model-store "$DEMO_DIR/store" >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null; wait $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 600); do
  ADDR=$(grep -o 'listening on [0-9.]*:[0-9]*' "$LOG" | awk '{print $3}' || true)
  [ -n "$ADDR" ] && break
  kill -0 $SERVER 2>/dev/null || { cat "$LOG"; exit 1; }
  sleep 0.1
done
echo "server at $ADDR"
"$SA" models list --server "$ADDR"

TEXT=${DEMO_TEXT:-"please call me back when you get home tonight"}
VOICE=${DEMO_VOICE:-en-us+m7}
echo "== streaming a synthesized sentence at real-time pace: \"$TEXT\" ($VOICE, a speaker not in training) =="
espeak-ng -v "$VOICE" -s 160 -w "$DEMO_DIR/sentence.wav" "$TEXT"
"$SA" transcribe "$DEMO_DIR/sentence.wav" --server "$ADDR" --interim --realtime
echo "== the same, as JSON lines =="
"$SA" transcribe "$DEMO_DIR/sentence.wav" --server "$ADDR" --json
