"""The tiny synthetic workflow through a real Slurm, with `snakemake --profile slurm` as typed.

Needs a Slurm with job accounting on this machine: `.ci/slurm.sh up` starts a one-node
cluster (`anodiff-ci`); `.ci/slurm.sh` starts it, runs this file and stops it (CI). Runs by
itself against that cluster; against any other cluster only with ANODIFF_SLURM_TEST=1 (it
submits real jobs, GPU requests included, with ANODIFF_SLURM_ACCOUNT / _PARTITION /
_GPU_PARTITION from the environment). Skipped otherwise, with the reason; ANODIFF_REQUIRE_SLURM=1
(set by .ci/slurm.sh) turns that skip into a failure so CI cannot pass without Slurm.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from anodiff.metrics import METRIC_NAMES

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")  # the venv's, as the README runs it
CI_CLUSTER = "anodiff-ci"  # ClusterName in .ci/slurm.sh
CATEGORIES = ["weave", "washer"]
PROFILE = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
# every rule the profile gives a GPU (set-resources), and those of them this tiny run must have
GPU_RULES = {rule for rule, request in PROFILE["set-resources"].items() if request.get("gpu")}
GPU_RULES_RUN = {"cache_features", "train", "link_model", "infer"}
CPU_RULES = {"prepare_dataset", "evaluate", "aggregate", "figures"}
LOCAL_RULES = {"fetch_weights", "init_tracking"}  # localrules in the Snakefile
RUN_LIMIT_S = 1500  # `timeout -s KILL`: a misconfigured status query would otherwise hang forever
pytestmark = pytest.mark.timeout(RUN_LIMIT_S + 900)  # the run, the reference training, sacct
KILLED = "weave"  # the category whose training job Slurm kills after its first checkpoint

TINY_CONFIG = {  # one tiny inversion model per category; every rule of the workflow runs
    "experiment": "anodiff-slurm",
    "seed": 0,
    "device": "auto",
    "weights_dir": "resources/weights",
    "mlflow": {"tracking_uri": "sqlite:///results/mlflow.db", "artifact_location": "results/mlartifacts"},
    "datasets": {
        "synthetic": {
            "source": "synthetic",
            "root": "resources/datasets/synthetic",
            "categories": CATEGORIES,
            "synthetic": {"image_size": 64, "n_train": 16, "n_test_good": 6, "n_test_per_defect": 2, "seed": 0},
        }
    },
    "methods": {
        "inversion": {
            "tiny": {
                "datasets": ["synthetic"],
                "setting": "per_class",
                "overrides": {
                    "backbone": {"image_size": 64, "feature_size": 8, "allow_random_weights": True},
                    "unet": {"block_out_channels": [32, 32], "layers_per_block": 1, "norm_num_groups": 8,
                             "attention_resolutions": [], "mid_block_attention": False},
                    # 20 epochs: a checkpoint at epoch 10 and time to kill the job after it
                    "training": {"epochs": 20, "batch_size": 8, "warmup_epochs": 1, "lr": 1.0e-3},
                    "inference": {"num_inversion_steps": 3},
                },
            }
        }
    },
}


def _run(*command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def _slurm_unavailable() -> str | None:
    """Why this test cannot run here, or None."""
    if shutil.which("sbatch") is None:
        return "no Slurm here (sbatch not on PATH); `.ci/slurm.sh up` starts a one-node cluster"
    try:
        config = _run("scontrol", "show", "config", timeout=20)
    except subprocess.TimeoutExpired:
        return "Slurm is installed but slurmctld does not answer within 20 s"
    if config.returncode != 0:
        return f"Slurm is installed but slurmctld does not answer: {config.stderr.strip()[:200]}"
    cluster = re.search(r"^ClusterName\s*=\s*(\S+)", config.stdout, re.M)
    if (cluster and cluster[1]) != CI_CLUSTER and os.environ.get("ANODIFF_SLURM_TEST") != "1":
        return (f"Slurm cluster '{cluster and cluster[1]}' is not the CI cluster '{CI_CLUSTER}'; "
                "set ANODIFF_SLURM_TEST=1 to submit real jobs to it")
    states = _run("sinfo", "-h", "-o", "%T").stdout.split()
    if not {"idle", "mixed"} & set(states):
        return f"no Slurm node takes jobs (sinfo states: {states})"
    accounting = _run("sacct", "-n", "-X", "-S", "now")
    if accounting.returncode != 0:  # the plugin's default status query; without it Snakemake hangs
        return f"Slurm has no job accounting (sacct failed: {accounting.stderr.strip()[:200]})"
    return None


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    reason = _slurm_unavailable()
    if reason:
        if os.environ.get("ANODIFF_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("slurm-run")
    (workdir / "config").mkdir()
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    # The README's one-time step, into a private config dir: `--profile slurm` then resolves
    # through $XDG_CONFIG_HOME/snakemake/slurm, as it does through ~/.config/snakemake/slurm.
    xdg = tmp_path_factory.mktemp("xdg-config")
    (xdg / "snakemake").mkdir()
    (xdg / "snakemake" / "slurm").symlink_to(REPO / "workflow" / "profiles" / "slurm")
    env = {**os.environ, "XDG_CONFIG_HOME": str(xdg), "HF_HUB_OFFLINE": "1"}

    def snakemake(*args: str, limit: int = RUN_LIMIT_S) -> list[str]:
        return ["timeout", "-s", "KILL", str(limit), str(SNAKEMAKE), "--profile", "slurm",
                "--directory", str(workdir), *args]

    def dry_run() -> subprocess.CompletedProcess:
        return subprocess.run(snakemake("--dry-run", limit=300), cwd=REPO, env=env,
                              capture_output=True, text=True)

    started = time.monotonic()
    with open(workdir / "snakemake.out", "w") as out:
        process = subprocess.Popen(
            snakemake("--slurm-init-seconds-before-status-checks", "2", "--slurm-keep-successful-logs"),
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
        killed = _kill_training_after_checkpoint(workdir, process)
    seconds = time.monotonic() - started
    log = _snakemake_log(workdir)
    if process.returncode != 0:
        run_id = re.search(r"SLURM run ID: (\S+)", log)
        if run_id:  # a killed Snakemake leaves its jobs queued
            _run("scancel", "--name", run_id[1])
    output = (workdir / "snakemake.out").read_text()
    assert process.returncode == 0, f"rc={process.returncode}\n{log[-6000:]}\n{output[-3000:]}"
    print(f"workflow through Slurm: {seconds:.0f} s; killed training job {killed}")
    return workdir, log, killed, dry_run


def _kill_training_after_checkpoint(workdir: Path, process: subprocess.Popen) -> str | None:
    """Wait for the Snakemake run. Once the KILLED category's training has written its first
    checkpoint, SIGKILL its Python process: the Slurm job fails, as after a time limit, and
    Snakemake resubmits it. Returns that Slurm job's id; None if the process never showed up
    here (Slurm on other machines).

    A kill, not `scancel`: sacct reports a cancelled job as "CANCELLED by <uid>", which plugin
    2.8.0 does not recognise as failed, so Snakemake would wait for it forever.
    """
    checkpoint = workdir / f"results/synthetic/inversion/tiny/models/{KILLED}.pt.ckpt"
    train_log = workdir / f"results/logs/train/synthetic/inversion/tiny/{KILLED}.log"
    killed = None
    while process.poll() is None:
        if killed is None and checkpoint.is_file() and (pid := _process_with_open(train_log)):
            os.kill(pid, signal.SIGKILL)
            killed = _train_submissions(_snakemake_log(workdir))[0]
        time.sleep(0.2)
    return killed


def _process_with_open(path: Path) -> int | None:
    """The training script's process on this machine that has ``path`` (its log) open."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().rstrip(b"\0").endswith(b".train.py"):
                if any(os.readlink(fd) == str(path) for fd in (proc / "fd").iterdir()):
                    return int(proc.name)
        except OSError:  # the process ended meanwhile
            continue
    return None


def _train_submissions(log: str) -> list[str]:
    """Slurm job ids of the KILLED category's training, in submission order."""
    return re.findall(rf"submitted with SLURM jobid (\d+) \(log: \S*/rule_train/\S*_{KILLED}/", log)


def _snakemake_log(workdir: Path) -> str:
    logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text() if logs else ""


def _jobs_of(log: str) -> tuple[dict[int, tuple[str, bool]], dict[int, list[str]]]:
    """Snakemake job id -> (rule, local) from the log, and job id -> the Slurm job ids it got."""
    rules, submitted, current = {}, {}, None
    for line in log.splitlines():
        if match := re.match(r"^(local)?rule (\w+):$", line):
            current = (match[2], bool(match[1]))
        elif (match := re.match(r"^\s+jobid: (\d+)$", line)) and current:
            rules[int(match[1])] = current
            current = None
        elif match := re.search(r"Job (\d+) has been submitted with SLURM jobid (\d+)", line):
            submitted.setdefault(int(match[1]), []).append(match[2])
    return rules, submitted


def _sacct(job_ids: list[str]) -> pd.DataFrame:
    """Final accounting records of the jobs (slurmdbd gets them a few seconds after the end)."""
    fields = ["JobIDRaw", "State", "Partition", "Account", "AllocTRES", "ExitCode"]
    for _ in range(60):
        result = _run("sacct", "-X", "-n", "-P", "-j", ",".join(job_ids), "-o", ",".join(fields))
        rows = [line.split("|") for line in result.stdout.splitlines() if line]
        table = pd.DataFrame(rows, columns=fields)
        if set(job_ids) <= set(table.JobIDRaw) and not table.State.isin(["PENDING", "RUNNING"]).any():
            return table.set_index("JobIDRaw")
        time.sleep(1)
    raise AssertionError(f"sacct has no final record of some of {job_ids}:\n{result.stdout}{result.stderr}")


@pytest.mark.slow
def test_every_compute_job_went_through_slurm(slurm_run):
    workdir, log, _, _ = slurm_run
    rules, submitted = _jobs_of(log)
    by_rule = {}
    for job, (rule, local) in rules.items():
        by_rule.setdefault(rule, set()).add((job in submitted, local))
    assert set(by_rule) >= GPU_RULES_RUN | CPU_RULES | LOCAL_RULES
    for rule in (GPU_RULES & set(by_rule)) | CPU_RULES:
        assert by_rule[rule] == {(True, False)}, f"{rule}: every job submitted to Slurm"
    for rule in LOCAL_RULES:
        assert by_rule[rule] == {(False, True)}, f"{rule}: runs on the login node"
    # sbatch's output is in every job's own Slurm log (kept here with --slurm-keep-successful-logs)
    for job_ids in submitted.values():
        for slurm_id in job_ids:
            assert list((workdir / ".snakemake" / "slurm_logs").rglob(f"{slurm_id}.log")), slurm_id


@pytest.mark.slow
def test_sacct_records_gpu_and_cpu_requests(slurm_run):
    _, log, killed, _ = slurm_run
    rules, submitted = _jobs_of(log)
    slurm_rule = {sid: rules[job][0] for job, ids in submitted.items() for sid in ids}
    table = _sacct(list(slurm_rule))
    account = os.environ.get("ANODIFF_SLURM_ACCOUNT")
    partition = os.environ.get("ANODIFF_SLURM_PARTITION")
    gpu_partition = os.environ.get("ANODIFF_SLURM_GPU_PARTITION") or partition
    for slurm_id, rule in slurm_rule.items():
        record = table.loc[slurm_id]
        if slurm_id == killed:
            assert record.State == "FAILED", dict(record)
        else:
            assert record.State == "COMPLETED" and record.ExitCode == "0:0", (rule, dict(record))
        tres = dict(item.split("=", 1) for item in record.AllocTRES.split(","))
        if rule in GPU_RULES:
            assert tres.get("gres/gpu") == "1" and tres["cpu"] == "8", (rule, record.AllocTRES)
            expected_partition = gpu_partition
        else:
            assert "gres/gpu" not in tres and tres["cpu"] == "1", (rule, record.AllocTRES)
            expected_partition = partition
        if expected_partition:
            assert record.Partition == expected_partition, (rule, record.Partition)
        if account:
            assert record.Account == account, (rule, record.Account)


@pytest.mark.slow
def test_killed_training_job_resumes_on_retry_to_the_uninterrupted_model(slurm_run, tmp_path):
    workdir, log, killed, _ = slurm_run
    if killed is None:
        reason = f"the {KILLED} training process never ran on this machine, so it was not killed"
        if os.environ.get("ANODIFF_REQUIRE_SLURM") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    # 1. Snakemake resubmitted the failed job (retries: 3 in the profile) ...
    submissions = _train_submissions(log)
    assert submissions[0] == killed and len(submissions) == 2, submissions
    # 2. ... which continued from the checkpoint instead of starting over ...
    train_log = workdir / f"results/logs/train/synthetic/inversion/tiny/{KILLED}.log"
    assert re.search(r"resuming from \S+\.ckpt after epoch (10|20)", train_log.read_text())
    # 3. ... to the weights of an uninterrupted run: train once more, locally, from the same
    # feature caches in a copy of the run directory. Same seed, CPU, and thread count: the
    # Slurm job ran with the profile's 8 threads, scaled down to this machine's cores
    # (its job step runs `--cores all`); floating-point sums depend on the thread count.
    reference = tmp_path / "reference"
    for name in ("config", "resources"):
        shutil.copytree(workdir / name, reference / name, symlinks=True)
    shutil.copytree(workdir / "results", reference / "results",
                    ignore=shutil.ignore_patterns("models", "predictions", "metrics", "tables", "figures"))
    model = f"results/synthetic/inversion/tiny/models/{KILLED}.pt"
    result = subprocess.run(
        ["timeout", "-s", "KILL", "600", str(SNAKEMAKE), "--cores", "all", "--set-threads", "train=8",
         "--directory", str(reference), model],
        cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    output = result.stdout + result.stderr
    assert "rule train:" in output and "rule cache_features:" not in output
    resumed = torch.load(workdir / model, map_location="cpu", weights_only=False)["state"]
    uninterrupted = torch.load(reference / model, map_location="cpu", weights_only=False)["state"]
    _assert_equal(resumed, uninterrupted)


def _assert_equal(a, b, where="state"):
    """Bit-identical nested state (dicts, lists, tensors, arrays, numbers)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.slow
def test_outputs_are_complete(slurm_run):
    workdir, _, _, _ = slurm_run
    table = pd.read_parquet(workdir / "results/tables/metrics.parquet")
    assert sorted(table.category) == sorted(CATEGORIES + ["mean"])
    metrics = table[list(METRIC_NAMES)].to_numpy()
    assert np.isfinite(metrics).all() and (metrics >= 0).all() and (metrics <= 1).all()
    for category in CATEGORIES:
        assert (workdir / f"results/synthetic/inversion/tiny/models/{category}.pt").is_file()
        assert (workdir / f"results/synthetic/inversion/tiny/predictions/{category}.npz").is_file()
    for name in ("qualitative", "metrics"):
        assert (workdir / f"results/figures/synthetic/inversion/tiny/{name}.png").stat().st_size > 0
    assert not list(workdir.rglob("*.ckpt")), "finished training leaves no checkpoint"
    # parallel jobs shared one SQLite store: every finished job has its run
    client = MlflowClient(f"sqlite:///{workdir}/results/mlflow.db")
    experiment = client.get_experiment_by_name("anodiff-slurm")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'", max_results=100)
    stages = [(run.data.tags["stage"], run.data.tags.get("group", "")) for run in runs]
    assert sorted(g for stage, g in stages if stage == "train") == sorted(CATEGORIES)
    assert sum(stage == "evaluate" for stage, _ in stages) == len(CATEGORIES)


@pytest.mark.slow
def test_rerun_through_the_profile_is_a_no_op(slurm_run):
    _, _, _, dry_run = slurm_run
    result = dry_run()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr
