#!/usr/bin/env bash
# The README's "Running on a cluster" commands, one step each, word for word. tests/test_cluster.py
# runs these steps on one machine (a real head, an MLflow server, a real `ray job submit`), so what
# the README says is what was run.
#
#   bash cluster/verify_job_submit.sh token    # once, where you submit from: the cluster's token
#   bash cluster/verify_job_submit.sh head     # on the head node: the Ray head
#   bash cluster/verify_job_submit.sh mlflow   # on the head node: the MLflow server (stays in the foreground)
#   bash cluster/verify_job_submit.sh node     # on every other node: join the head
#   bash cluster/verify_job_submit.sh submit   # where you submit from: the training job
#
# Parameters, from the environment, as in the README: HEAD (the head's address), RAY_PORT,
# DASHBOARD_PORT, MLFLOW_PORT, SHARED (storage every node sees), RUN_ID. `head` and `node` pass
# any further arguments on to `ray start` (the test adds its own ports, --temp-dir and --block,
# because other Ray instances may run on the same machine).
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:?usage: verify_job_submit.sh token|head|mlflow|node|submit [ray start flags]}
shift
HEAD=${HEAD:-127.0.0.1} RAY_PORT=${RAY_PORT:-6379} DASHBOARD_PORT=${DASHBOARD_PORT:-8265}
MLFLOW_PORT=${MLFLOW_PORT:-5000} SHARED=${SHARED:-/mnt/shared} RUN_ID=${RUN_ID:-sklearn-digits-on-a-cluster}

# --- README: the same two lines on every node and where you submit from ---
export RAY_AUTH_MODE=token
export MLFLOW_TRACKING_URI=http://$HEAD:$MLFLOW_PORT

case "$step" in
token)  # --- README: make the token once; copy ~/.ray/auth_token to every node ---
    ray get-auth-token --generate > /dev/null
    ;;
head)  # --- README: the head ---
    exec ray start --head --port="$RAY_PORT" --dashboard-host=0.0.0.0 --dashboard-port="$DASHBOARD_PORT" --num-cpus=4 "$@"
    ;;
mlflow)  # --- README: the tracking server, its store and artifacts on shared storage ---
    exec mlflow server --host 0.0.0.0 --port "$MLFLOW_PORT" --workers 1 \
        --backend-store-uri "sqlite:///$SHARED/mlflow.db" --serve-artifacts --artifacts-destination "$SHARED/mlartifacts"
    ;;
node)  # --- README: every other node ---
    exec ray start --address="$HEAD:$RAY_PORT" "$@"
    ;;
submit)  # --- README: the job ---
    ray job submit --address "http://$HEAD:$DASHBOARD_PORT" --working-dir . --runtime-env cluster/runtime_env.yaml \
        -- python jobs/train.py --config jobs/configs/sklearn_digits.yaml \
           --set train.num_workers=2 --set train.epochs=2 --set train.run_id="$RUN_ID" \
           --set data.root="$SHARED/data" --set train.storage_path="$SHARED/runs" \
           --set tracking.uri="$MLFLOW_TRACKING_URI"
    ;;
*)
    echo "unknown step $step: token, head, mlflow, node or submit" >&2
    exit 2
    ;;
esac
