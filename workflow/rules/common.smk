# The plan of every run (anodiff.plan), built once when the DAG is built, and the input
# functions the rules read it through. A config mistake (unknown method, typo'd
# hyper-parameter, a table row without a run) fails here, before any job starts.
import gc
import inspect
from pathlib import Path

from snakemake.common import overwrite_function_params

from anodiff import paths
from anodiff.data.digests import DataDigests
from anodiff.inputs import JobInputs
from anodiff.plan import build_plan


# The DAG build makes millions of long-lived objects (jobs, files, wildcards) and no garbage
# cycles worth collecting: the cyclic collector's passes over them took a fifth of the paper
# plan's build (benchmarks/bench_dag.py). Off while the DAG is built; on again when the first job
# starts (onstart; with --no-hooks it stays off, and reference counting still frees the rest).
if workflow.is_main_process:
    gc.disable()


onstart:
    gc.enable()


PLAN = build_plan(config, Path(workflow.basedir))  # validates the config against the schema
config.update(PLAN.config)  # with the schema's defaults (jobs read device, weights_dir, mlflow)
ENV = "../../envs/anodiff.yaml"


wildcard_constraints:
    dataset="[^/]+",
    images="[^/]+",
    method="[^/]+",
    variant="[^/]+",
    category="[^/]+",
    group="[^/.]+",
    weights_key="[^/]+",
    spec_key="[^/]+",
    paper="[^/]+",
    table="[^/]+",
    figure="[^/]+",
    split="train|test",


def of_wildcards(function):
    """``function`` as an input, param or resource function of the job's wildcards. Its
    signature is recorded once: Snakemake would inspect it on every call otherwise (about
    140,000 calls, a sixth of the paper plan's DAG build)."""

    def call(wildcards):
        return function(wildcards)

    overwrite_function_params(call, inspect.signature(call).parameters)
    return call


class InputFunctions:
    """``INPUTS.<name>``: the method ``JobInputs.<name>`` as an input function."""

    def __init__(self, inputs):
        self._inputs = inputs

    def __getattr__(self, name):
        function = of_wildcards(getattr(self._inputs, name))
        setattr(self, name, function)
        return function


def param(attribute):
    """A job's param: one attribute of its run in the plan (plain data, never a path)."""
    return of_wildcards(lambda w: getattr(PLAN.run(w.dataset, w.method, w.variant), attribute))


# --- anodiff.architectures: plan-time meta-device check of every distinct model -----------
# Builds each architecture the last successful check has not seen on torch.device("meta") and
# runs it on meta tensors of the real shapes, so an impossible combination fails the dry run
# naming the variant. An unchanged plan only compares digests (no torch import); the facts it
# records (.snakemake/anodiff/architectures.json) size the jobs' resources (anodiff.budget).
import os
import sys

if workflow.is_main_process and os.environ.get("ANODIFF_SKIP_ARCHITECTURE_CHECK") != "1":
    from anodiff.architectures import check_cached

    check_cached(PLAN, log=lambda message: print(message, file=sys.stderr))
# --- end anodiff.architectures ----------------------------------------------------------

# --- anodiff.budget: each GPU job's mem_mb, runtime and gpu_mem_mb, estimated from the plan ---
# (image counts, the meta check's record of each model; the profile's former values as floors;
# formulas: anodiff.budget). Torch-free; one estimate per job, memoised.
_ESTIMATOR = []


def estimated(kind, name):
    @of_wildcards
    def get(wildcards):
        if not _ESTIMATOR:
            from anodiff.budget import Estimator, load_record

            _ESTIMATOR.append(Estimator(PLAN, load_record()))
        return _ESTIMATOR[0].job(kind, wildcards)[name]

    return get


def estimated_resources(kind):
    return {name: estimated(kind, name) for name in ("mem_mb", "runtime", "gpu_mem_mb")}
# --- end anodiff.budget ----------------------------------------------------------------


JOB_INPUTS = JobInputs(PLAN, config["weights_dir"])  # what every job reads (anodiff.inputs)
INPUTS = InputFunctions(JOB_INPUTS)
# the digest of the dataset files a job reads, as its param: changed data re-runs what it
# affects (anodiff.data.digests; computed lazily, memoised per category and split)
DATA = InputFunctions(DataDigests(JOB_INPUTS))


# --- Snakemake 9.27 workaround: params recorded as they are when a job runs -----------------
# Before a job runs, Snakemake resets its params (they may hold values computed at DAG build,
# e.g. a data digest from before prepare_dataset wrote the dataset) but not the copy its
# metadata records (`non_derived_params`). A local job reads its params and so refreshes both;
# a job run by a cluster executor does not, and its metadata kept the DAG-build value, so the
# next run saw "params have changed" and redid everything (tests/test_slurm.py). Reset both.
from snakemake.jobs import Job as _Job

if not getattr(_Job.reset_params_and_resources, "resets_recorded_params", False):
    _reset_params = _Job.reset_params_and_resources

    def _reset_params_and_recorded_params(self):
        if not self._params_and_resources_resetted:
            self._non_derived_params = None
        _reset_params(self)

    _reset_params_and_recorded_params.resets_recorded_params = True
    _Job.reset_params_and_resources = _reset_params_and_recorded_params
