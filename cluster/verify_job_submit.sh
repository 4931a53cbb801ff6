#!/usr/bin/env bash
# Verify the cluster path on this machine: start a real Ray head (`ray start --head`), submit the
# training job exactly as on a cluster with `ray job submit`, check it succeeded, stop the head.
#
#   bash cluster/verify_job_submit.sh [CONFIG] [extra --set overrides...]
#
# Defaults to a short sklearn-digits run with 2 workers so it finishes in about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RAY="$(dirname "$PY")/ray"
export PATH="$(cd "$(dirname "$PY")" && pwd):$PATH"  # the job's `python` is this environment's, as on a cluster image
CONFIG=${1:-jobs/configs/sklearn_digits.yaml}
shift || true
WORK=$(mktemp -d)
PORT=${RAY_PORT:-6390}
DASH=${RAY_DASHBOARD_PORT:-8275}
# Ray 2.60 heads require a token; the job client sends it when RAY_AUTH_MODE=token.
export RAY_AUTH_MODE=token
test -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" || "$RAY" get-auth-token --generate >/dev/null
# Stop only this head: every process of it names its own temp dir (`ray stop` would stop every
# Ray instance on the machine, including ones that are not ours).
stop_head() {
    pkill -TERM -f "$WORK/ray" 2>/dev/null || true
    sleep 2
    pkill -KILL -f "$WORK/ray" 2>/dev/null || true
    rm -rf "$WORK"
}
trap stop_head EXIT

"$RAY" start --head --port="$PORT" --dashboard-port="$DASH" --num-cpus=4 --include-dashboard=true \
    --dashboard-agent-listen-port=$((DASH + 1)) --dashboard-agent-grpc-port=$((DASH + 2)) \
    --runtime-env-agent-port=$((DASH + 3)) --metrics-export-port=$((DASH + 4)) \
    --ray-client-server-port=$((DASH + 5)) \
    --temp-dir="$WORK/ray" --disable-usage-stats >/dev/null  # own ports: another Ray may run here
RUN_ID="job-submit-$(date +%s)"
# The command of the README's cluster section, against this head (retried while the head's job
# agent is still starting: "No available agent to submit job").
for attempt in 1 2 3 4 5 6 7 8 9 10 11 12; do
    if RAY_ADDRESS="http://127.0.0.1:$DASH" "$RAY" job submit --working-dir . --runtime-env cluster/runtime_env.yaml \
        -- python jobs/train.py --config "$CONFIG" \
        --set train.num_workers=2 --set train.epochs=2 --set train.run_id="$RUN_ID" \
        --set train.storage_path="$WORK/runs" --set data.root="$WORK/data" \
        --set tracking.uri="sqlite:///$WORK/mlflow.db" --set tracking.artifact_location="file://$WORK/mlartifacts" \
        "$@" > "$WORK/job.log" 2>&1; then
        break
    fi
    grep -q "No available agent" "$WORK/job.log" || break
    sleep 5
done
cat "$WORK/job.log"
grep -q "succeeded" "$WORK/job.log"
test -f "$WORK/runs/$RUN_ID/final_checkpoint.txt"
echo "verified: ray job submit ran jobs/train.py on a real head; checkpoint $(cat "$WORK/runs/$RUN_ID/final_checkpoint.txt")"
