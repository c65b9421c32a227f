#!/usr/bin/env bash
# `make demo`: train (once) the tiny command model, serve it, stream a synthesized sentence at
# real-time pace and print interim and final transcripts as they arrive.
set -euo pipefail
PY=${PY:-.venv/bin/python}
SA=$(dirname "$PY")/speechadapt
DEMO_DIR=${DEMO_DIR:-.cache/demo}
mkdir -p "$DEMO_DIR"

if [ ! -f "$DEMO_DIR/store/tiny/1/model.json" ]; then
  echo "== training the tiny command model (about two minutes, once) =="
  "$PY" -m speechadapt.training.tiny --out "$DEMO_DIR"
fi

echo "== starting the server =="
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

TEXT="one two three go left stop"
echo "== streaming a synthesized sentence at real-time pace: \"$TEXT\" (en-us) =="
espeak-ng -v en-us -s 150 -w "$DEMO_DIR/sentence.wav" "$TEXT"
"$SA" transcribe "$DEMO_DIR/sentence.wav" --server "$ADDR" --interim --realtime
echo "== the same, as JSON lines =="
"$SA" transcribe "$DEMO_DIR/sentence.wav" --server "$ADDR" --json
