#!/usr/bin/env bash
# The device checks, in one call of the device tool (run bench/gpu_prepare.sh here first):
#   command: bash bench/gpu_check.sh      carry: [".whl", ".gpu-data"]      timeout_s: 590
# Runs on the device machine (Python 3.12 + CUDA torch, no network) and writes to $OUT:
#   gpu_check.json  one summary (environment, each step's exit status and seconds, the numbers)
#   log.txt         everything the steps printed
#   sim.json        fedsim bench sim --device cuda: vectorized vs sequential trainer, K = 10/100/1000
#   repair.json     fedsim bench repair --device cuda --model lenet: residual / repair error vs steps
#                   up to the paper's 10,000, warm vs cold, batched vs one-by-one inversion (written
#                   after every curve: a step that runs out of time keeps what it measured)
#   staleness.json  fedsim run staleness-paper (LeNet) on the GPU, as many arms as the time left allows
# Each step has its own time limit and the script stops starting steps 60 s before $GPU_CHECK_BUDGET
# (default 540 s), so a slow step costs its own numbers only. GPU_CHECK_DEVICE=cpu GPU_CHECK_QUICK=1
# runs the same script on a CPU with tiny sizes (a check of the script itself, no numbers).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-$ROOT/runs/gpu-check}
mkdir -p "$OUT"
DEVICE=${GPU_CHECK_DEVICE:-cuda}
QUICK=${GPU_CHECK_QUICK:-0}
BUDGET=${GPU_CHECK_BUDGET:-540}
START=$(date +%s)
export PYTHONUNBUFFERED=1 FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
if ! python3 -c "import flwr, opacus" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then  # the device lacks them
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d .gpu-data/fashion-mnist ] && export FASHION_MNIST_DIR=$ROOT/.gpu-data/fashion-mnist
rm -rf /tmp/sim.json /tmp/bench-repair /tmp/staleness  # outputs of an earlier run of this script
LOG=$OUT/log.txt
: >"$LOG"
STEPS=()

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME LIMIT_S COMMAND...: runs it under `timeout`, logs, records status and seconds
step() {
  local name=$1 limit=$2; shift 2
  local room=$(( $(left) - 60 ))
  if [ "$room" -le 10 ]; then
    STEPS+=("{\"step\": \"$name\", \"status\": \"not started: out of time\"}"); return
  fi
  [ "$limit" -gt "$room" ] && limit=$room
  echo "=== $name (limit ${limit}s)" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  STEPS+=("{\"step\": \"$name\", \"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 )), \"limit\": $limit}")
  echo "=== $name: rc $rc" | tee -a "$LOG"
}

if [ "$QUICK" = 1 ]; then
  MODEL=mlp; SIM=(--cohorts 2,4 --rounds 2 --trainer-compare)
  REP=(--steps 20 --warmup 2 --delay 3 --batch 2 --batch-steps 3 --warm-step 1,0.1)
  STALE=(--set rounds=4 --set eval_every=2 --set stale_model_delay=2 --arms unstale,repair)
else
  MODEL=lenet; SIM=(--cohorts 10,100,1000 --rounds 5)
  REP=(--steps 10000 --batch 4,16 --batch-steps 100 --warm-step 1,0.3)
  STALE=(--arms unstale,direct,repair,repair-correct,oracle,weighted,fedasync,fedbuff)
fi

python3 - >"$OUT/env.json" 2>>"$LOG" <<'PY'
import json, platform, torch
print(json.dumps({"python": platform.python_version(), "torch": torch.__version__,
                  "cuda": torch.cuda.is_available(),
                  "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}))
PY
cat "$OUT/env.json" | tee -a "$LOG"

# 1. CUDA equivalence tests (skipped, not failed, without a GPU)
step tests 150 python3 -m pytest -q -p no:cacheprovider tests/equivalence/test_device.py tests/equivalence/test_vectorized_trainer.py
# 2. vectorized vs sequential trainer (the target: >= 20x clients/s at K = 100)
step sim 150 bash -c 'python3 -m fedsim bench sim --device "$0" "${@}" --json >/tmp/sim.json' "$DEVICE" "${SIM[@]}"
[ -s /tmp/sim.json ] && cp /tmp/sim.json "$OUT/sim.json"
# 3. the batched repair inversion at the paper's step budget, LeNet
step repair 240 python3 -m fedsim bench repair --device "$DEVICE" --model "$MODEL" "${REP[@]}" --out /tmp/bench-repair --json
[ -f /tmp/bench-repair/repair.json ] && cp /tmp/bench-repair/repair.json "$OUT/repair.json"
# 4. the staleness-paper preset with its LeNet, clients and repair on the GPU, seed 0, arm after arm
#    for the time left (the arms that finished are collected even if the step runs out of time)
step staleness 600 python3 -m fedsim run staleness-paper --set client.device="$DEVICE" --set repair.device="$DEVICE" \
  --set model.name="$MODEL" --set 'seeds=[]' --set checkpoint_every=0 "${STALE[@]}" --out /tmp/staleness --quiet
python3 - >"$OUT/staleness.json" 2>>"$LOG" <<'PY'
import json, pathlib
arms = {}
for arm in sorted(pathlib.Path("/tmp/staleness").glob("*/summary.json")):
    rows = [json.loads(line) for line in (arm.parent / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = [(r["round"], r.get("accuracy_stale_classes")) for r in rows if r.get("accuracy") is not None]
    arms[arm.parent.name] = {"summary": json.loads(arm.read_text()), "stale_class_accuracy": curve}
print(json.dumps(arms))
PY

python3 - "$OUT" "$(left)" "${STEPS[@]}" <<'PY'
import json, sys
out, left, steps = sys.argv[1], int(sys.argv[2]), [json.loads(s) for s in sys.argv[3:]]
summary = {"env": json.load(open(f"{out}/env.json")), "steps": steps, "seconds_left_of_budget": left}
for name in ("sim", "repair", "staleness"):
    try:
        summary[name] = json.load(open(f"{out}/{name}.json"))
    except (OSError, ValueError):
        summary[name] = None
json.dump(summary, open(f"{out}/gpu_check.json", "w"), indent=2)
print(json.dumps(summary["steps"]))
PY
