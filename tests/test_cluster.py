"""The cluster as the README documents it, on this machine: a real Ray head and a second node
(`ray start`, token authentication), an `mlflow server`, training submitted with `ray job submit`.

Every command comes from `cluster/verify_job_submit.sh`, whose steps are the README's cluster
commands word for word; the tests add only what sharing one machine with other Ray instances
needs (their own ports and --temp-dir, `--block` so that each node is stopped by its process id)
and their own HOME (so the cluster's token is theirs, not the user's ~/.ray/auth_token).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from acn_dist.config import load
from acn_dist.data.reader import ShardLoader
from acn_dist.errors import ClusterError
from acn_dist.runs.folder import RunFolder
from acn_dist.train.cluster import check_resources
from tests.test_tracking_server import MlflowServer, free_port, stop_group, wait_until_up

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cluster/verify_job_submit.sh"
BIN = Path(sys.executable).parent  # the job's `python`, `ray` and `mlflow`: this environment's, as on a cluster image


# ----------------------------------------------------------------------------- GPU check, no Ray

def gpu_config(*overrides: str):
    return load(None, ["train.num_workers=2", *overrides])


def test_gpus_are_counted_on_the_cluster_not_on_this_machine() -> None:
    cpu_head, gpu_node = {"CPU": 8.0}, {"CPU": 16.0, "GPU": 4.0}
    # the cluster.yaml shape: a CPU head, GPU workers; this machine has no CUDA, and that is fine
    check_resources(gpu_config("train.use_gpu=true", "codes.backend=gpu", "codes.num_gpus=2"), [cpu_head, gpu_node])
    with pytest.raises(ClusterError, match=r"needs 2 GPUs \(2 for train.use_gpu=true with train.num_workers=2\), "
                                           r"the cluster has 0 on its 1 live node"):
        check_resources(gpu_config("train.use_gpu=true"), [cpu_head])
    with pytest.raises(ClusterError, match=r"needs 5 GPUs \(4 for train.use_gpu=true .* \+ 1 for codes.backend=gpu "
                                           r"with codes.num_gpus=1\), the cluster has 4"):
        check_resources(gpu_config("train.num_workers=4", "train.use_gpu=true", "codes.backend=gpu",
                                   "codes.num_gpus=1"), [cpu_head, gpu_node])
    with pytest.raises(ClusterError, match="codes.num_gpus=2: the code-store actor needs 2 GPUs on one node, "
                                           "the largest node of the cluster has 1"):
        check_resources(gpu_config("codes.backend=gpu", "codes.num_gpus=2"), [{"CPU": 4, "GPU": 1}] * 3)
    with pytest.raises(ClusterError, match="codes.num_cpus=4: the code-store actor needs 4 CPUs on one node"):
        check_resources(gpu_config("codes.num_cpus=4"), [{"CPU": 3}] * 3)
    with pytest.raises(ClusterError, match="STRICT_SPREAD puts each of the 2 workers .* the cluster has 1"):
        check_resources(gpu_config("cluster.placement_strategy=STRICT_SPREAD"), [{"CPU": 8}])
    check_resources(gpu_config("model.objective=vae", "codes.num_gpus=8"), [cpu_head])  # no store, no GPU


# ----------------------------------------------------------------------------- a real cluster

@dataclass
class Cluster:
    env: dict[str, str]  # the README's variables (HEAD, RAY_PORT, ...), HOME and PATH
    shared: Path  # SHARED: storage every node sees
    mlflow: MlflowServer
    head: subprocess.Popen
    node: subprocess.Popen
    temp: Path
    logs: list[Path] = field(default_factory=list)

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.env['RAY_PORT']}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.env['DASHBOARD_PORT']}"

    def step(self, name: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), name, *args], cwd=ROOT, env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def ray(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], cwd=ROOT, env={**self.env, "RAY_AUTH_MODE": "token"},
                              capture_output=True, text=True, timeout=timeout)

    def actors(self) -> list[dict]:
        done = self.ray("list", "actors", "--address", self.gcs, "--format", "json", "--filter", "state=ALIVE",
                        "--limit", "1000")
        return json.loads(done.stdout) if done.returncode == 0 else []

    def nodes(self) -> list[dict]:
        done = self.ray("list", "nodes", "--address", self.gcs, "--format", "json")
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout)


def own_ports(prefix: str = "") -> list[str]:
    """Ports Ray would otherwise take at fixed defaults, clashing with other Ray instances here."""
    names = ["dashboard-agent-listen-port", "dashboard-agent-grpc-port", "runtime-env-agent-port",
             "metrics-export-port", "node-manager-port", "object-manager-port"]
    if prefix == "head":
        names.append("ray-client-server-port")
    return [f"--{name}={free_port()}" for name in names]


def start_node(env: dict[str, str], step: str, temp: Path, log: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(SCRIPT), step, "--block", f"--temp-dir={temp}", *own_ports(step), *flags],
                            cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(condition, what: str, timeout: float, every: float = 2.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The README's cluster: token, head (4 CPUs, plus one logical GPU for the GPU check), MLflow
    server, and a second node with 1 CPU, each a process of this test stopped by its id."""
    base = tmp_path_factory.mktemp("cluster")
    temp = Path(tempfile.mkdtemp(prefix="acnr", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    shared, home = base / "shared", base / "home"
    shared.mkdir()
    home.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("RAY_", "MLFLOW_")) and key not in ("PYTHONPATH",)}
    env.update(HOME=str(home), PATH=f"{BIN}:{env.get('PATH', '')}", HEAD="127.0.0.1", RAY_PORT=str(free_port()),
               DASHBOARD_PORT=str(free_port()), MLFLOW_PORT=str(free_port()), SHARED=str(shared),
               RAY_USAGE_STATS_ENABLED="0")
    processes: list[subprocess.Popen] = []
    try:
        token = subprocess.run(["bash", str(SCRIPT), "token"], cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=120)
        assert token.returncode == 0, token.stderr
        assert len((home / ".ray/auth_token").read_text().strip()) >= 32
        head = start_node(env, "head", temp / "h", base / "head.log", "--num-gpus=1")
        processes.append(head)
        mlflow_log = base / "mlflow.log"
        server = subprocess.Popen(["bash", str(SCRIPT), "mlflow"], cwd=ROOT, env=env, stdout=mlflow_log.open("w"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(server)
        uri = f"http://127.0.0.1:{env['MLFLOW_PORT']}"
        wait_until_up(f"{uri}/health", server, mlflow_log, timeout=120)
        wait_for(lambda: (temp / "h").exists() and head.poll() is None and
                 subprocess.run([str(BIN / "ray"), "status", "--address", f"127.0.0.1:{env['RAY_PORT']}"],
                                env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, timeout=60).returncode == 0,
                 "the Ray head", timeout=120)
        node = start_node(env, "node", temp / "n", base / "node.log", "--num-cpus=1")
        processes.append(node)
        made = Cluster(env, shared, MlflowServer(uri, shared / "mlartifacts", server), head, node, temp,
                       [base / "head.log", base / "node.log", mlflow_log])
        wait_for(lambda: sum(n["state"] == "ALIVE" for n in made.nodes()) == 2, "the second node", timeout=120)
        # the head takes jobs once its job agent is up ("No available agent to submit job" before)
        wait_for(lambda: made.ray("job", "submit", "--address", made.dashboard, "--", "true").returncode == 0,
                 "the head's job agent", timeout=120, every=3)
        yield made
    finally:
        for process in reversed(processes):
            stop_group(process)
        shutil.rmtree(temp, ignore_errors=True)


def test_the_cluster_runs_with_token_authentication(cluster: Cluster) -> None:
    """The job client is refused without RAY_AUTH_MODE=token (no token sent) and with a wrong token."""
    plain = {key: value for key, value in cluster.env.items() if key != "RAY_AUTH_MODE"}
    for env, refusal in ((plain, "Authentication required"),
                         ({**cluster.env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "f" * 64},
                          "Authentication failed")):
        done = subprocess.run([str(BIN / "ray"), "job", "list", "--address", cluster.dashboard], env=env,
                              capture_output=True, text=True, timeout=120)
        output = done.stdout + done.stderr
        assert done.returncode != 0 and refusal in output, output[-2000:]
    assert cluster.ray("job", "list", "--address", cluster.dashboard).returncode == 0  # with the token


def test_gpu_runs_are_checked_against_the_cluster_resources(cluster: Cluster) -> None:
    """A real head with one (logical) GPU on a machine without CUDA: the check reads the cluster."""
    script = (
        "import json, sys, ray\n"
        "from acn_dist.config import load\n"
        "from acn_dist.errors import ClusterError\n"
        "from acn_dist.train.cluster import check_resources, live_nodes\n"
        "ray.init(address=sys.argv[1], log_to_driver=False)\n"
        "out = {'nodes': live_nodes()}\n"
        "for name, overrides in json.loads(sys.argv[2]).items():\n"
        "    try:\n"
        "        check_resources(load(None, overrides)); out[name] = 'ok'\n"
        "    except ClusterError as error:\n"
        "        out[name] = str(error)\n"
        "print(json.dumps(out))\n")
    cases = {"one_gpu_worker": ["train.num_workers=1", "train.use_gpu=true"],
             "two_gpu_workers": ["train.num_workers=2", "train.use_gpu=true"],
             "gpu_store": ["train.num_workers=1", "train.use_gpu=true", "codes.backend=gpu", "codes.num_gpus=1"]}
    done = subprocess.run([sys.executable, "-c", script, cluster.gcs, json.dumps(cases)], cwd=ROOT,
                          env={**cluster.env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(node.get("GPU", 0) for node in out["nodes"]) == [0, 1]
    assert out["one_gpu_worker"] == "ok"
    assert out["two_gpu_workers"].startswith("the run needs 2 GPUs (2 for train.use_gpu=true with "
                                             "train.num_workers=2), the cluster has 1 on its 2 live nodes")
    assert "1 for codes.backend=gpu with codes.num_gpus=1" in out["gpu_store"]


def test_the_readme_job_submit_trains_and_logs_through_the_mlflow_server(cluster: Cluster) -> None:
    """`verify_job_submit.sh submit`: the README's `ray job submit`, against the real head."""
    from mlflow.tracking import MlflowClient

    started = time.time()
    done = cluster.step("submit", timeout=400)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "succeeded" in output, output[-4000:]
    run_folder = cluster.shared / "runs" / "sklearn-digits-on-a-cluster"
    checkpoint = Path((run_folder / "final_checkpoint.txt").read_text().strip())
    assert checkpoint.parent.parent == run_folder and (checkpoint / "meta.json").is_file()
    assert json.loads((checkpoint / "meta.json").read_text())["epoch"] >= 1

    client = MlflowClient(cluster.mlflow.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("acn_dist").experiment_id],
                                filter_string="tags.`acn_dist.run_id` = 'sklearn-digits-on-a-cluster'")
    assert run.info.status == "FINISHED" and run.data.params["train.num_workers"] == "2"
    assert run.info.end_time / 1000 > started and "loss" in run.data.metrics
    stored = {p.name for p in cluster.mlflow.artifacts.rglob("*") if run.info.run_id in p.parts and p.is_file()}
    assert stored == {"config.yaml", "final_checkpoint.txt", "meta.json"}, stored


def test_training_on_two_nodes_survives_losing_the_node_of_a_worker(cluster: Cluster) -> None:
    """Workers on both nodes (SPREAD), the store actor on the head (it needs 2 CPUs, the second
    node has 1); the second node is killed (SIGKILL of all its processes) after the first
    checkpoint, and the run resumes from it on the head alone and finishes. About 2-3 minutes."""
    run_id, epochs = "two-nodes", 30
    log = cluster.shared / "two-nodes.log"
    job = subprocess.Popen(
        [str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir", ".",
         "--runtime-env", "cluster/runtime_env.yaml", "--", "python", "jobs/train.py",
         "--config", "jobs/configs/sklearn_digits.yaml", "--set", "train.num_workers=2",
         "--set", f"train.epochs={epochs}", "--set", f"train.run_id={run_id}", "--set", "train.checkpoint_every=20",
         "--set", "train.max_failures=2", "--set", "cluster.placement_strategy=SPREAD", "--set", "codes.num_cpus=2",
         "--set", f"data.root={cluster.shared}/data", "--set", f"train.storage_path={cluster.shared}/runs",
         "--set", f"tracking.uri={cluster.mlflow.uri}"],
        cwd=ROOT, env={**cluster.env, "RAY_AUTH_MODE": "token"}, stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        nodes = {n["node_id"]: n for n in cluster.nodes() if n["state"] == "ALIVE"}
        head = next(node_id for node_id, n in nodes.items() if n["is_head_node"])
        second = next(node_id for node_id in nodes if node_id != head)

        def placed() -> dict | None:
            actors = cluster.actors()
            workers = sorted(a["node_id"] for a in actors if a["class_name"] == "RayTrainWorker")
            stores = [a["node_id"] for a in actors if a["class_name"] == "CodeStoreActor"]
            return {"workers": workers, "stores": stores} if len(workers) == 2 and stores else None

        first = wait_for(placed, "two training workers and the store actor", timeout=180)
        assert sorted(first["workers"]) == sorted([head, second]), first  # one worker on each node
        assert first["stores"] == [head]
        checkpoints = cluster.shared / "runs" / run_id / "checkpoints"
        wait_for(lambda: any((c / "meta.json").is_file() for c in checkpoints.glob("step-*")),
                 "the first checkpoint", timeout=180, every=0.5)
        killed_at = max(json.loads((c / "meta.json").read_text())["step"] for c in checkpoints.glob("step-*")
                        if (c / "meta.json").is_file())
        os.killpg(cluster.node.pid, signal.SIGKILL)  # every process of the second node at once: a lost machine
        cluster.node.wait(timeout=30)
        assert job.wait(timeout=420) == 0, log.read_text()[-4000:]
    finally:
        if job.poll() is None:
            job.kill()
    output = log.read_text()
    assert "succeeded" in output and "training attempt 1 failed" in output, output[-4000:]
    steps_per_epoch = ShardLoader(cluster.shared / "data" / "sklearn-digits", "train", 64, rank=0, world=2).steps(0)
    steps = [row["step"] for row in RunFolder.at(cluster.shared / "runs", run_id).history()]
    assert steps[-1] == epochs * steps_per_epoch > killed_at
    # resumed from a checkpoint written before the node was lost, not from scratch; only the steps
    # after that checkpoint are redone
    resumed = [int(step) for step in re.findall(r"resumed from \S+ at step (\d+)", output)]
    assert len(resumed) == 1 and resumed[0] >= killed_at, resumed
    rewinds = [after for before, after in zip(steps, steps[1:]) if after <= before]
    assert all(after > resumed[0] for after in rewinds) and len(rewinds) <= 1, rewinds
    final = Path((cluster.shared / "runs" / run_id / "final_checkpoint.txt").read_text().strip())
    assert json.loads((final / "meta.json").read_text())["step"] == epochs * steps_per_epoch
    alive = [n for n in cluster.nodes() if n["state"] == "ALIVE"]
    assert [n["node_id"] for n in alive] == [head]
