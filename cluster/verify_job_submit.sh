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
trap '"$RAY" stop --force >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

"$RAY" start --head --port="$PORT" --dashboard-port="$DASH" --num-cpus=4 --include-dashboard=true \
    --disable-usage-stats >/dev/null
RUN_ID="job-submit-$(date +%s)"
# The command of the README's cluster section, against this head:
RAY_ADDRESS="http://127.0.0.1:$DASH" "$RAY" job submit --working-dir . --runtime-env cluster/runtime_env.yaml \
    -- python jobs/train.py --config "$CONFIG" \
    --set train.num_workers=2 --set train.epochs=2 --set train.run_id="$RUN_ID" \
    --set train.storage_path="$WORK/runs" --set data.root="$WORK/data" \
    --set tracking.uri="sqlite:///$WORK/mlflow.db" --set tracking.artifact_location="file://$WORK/mlartifacts" \
    "$@" | tee "$WORK/job.log"
grep -q "succeeded" "$WORK/job.log"
test -f "$WORK/runs/$RUN_ID/final_checkpoint.txt"
echo "verified: ray job submit ran jobs/train.py on a real head; checkpoint $(cat "$WORK/runs/$RUN_ID/final_checkpoint.txt")"
