"""Imports: every module of the package imports on its own (no import cycles), and planning a
method (config, feature spec, weights, NFE, hashes) imports none of the heavy libraries."""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import anodiff

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "timm", "ot", "sklearn", "torchvision")

# Imports the heavy third-party libraries once, and no anodiff module, then imports each
# anodiff module in a forked child of its own, so an import cycle fails whatever the order of
# imports elsewhere; prints {module: traceback} of the failures.
EACH_MODULE_ON_ITS_OWN = r"""
import json, os, sys, traceback
import matplotlib
matplotlib.use("Agg")
import diffusers, matplotlib.pyplot, mlflow, ot, pandas, sklearn, timm, torch
assert not [name for name in sys.modules if name.split(".")[0] == "anodiff"]
failures = {}
for module in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__(module)
            status = 0
        except BaseException:
            os.write(write, traceback.format_exc().encode())
            status = 1
        os._exit(status)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    if os.waitpid(pid, 0)[1] != 0:
        failures[module] = message or "the child died without a traceback"
print(json.dumps(failures))
"""

# What the Snakemake DAG asks of every registered method, in a fresh interpreter; prints the
# heavy modules it imported.
PLAN_EVERY_METHOD = r"""
import json, sys
from pathlib import Path
from anodiff.config import load_method_config
from anodiff.methods import REGISTRY
for key, entry in REGISTRY.items():
    config = load_method_config(entry.config_class, Path("config/methods") / f"{key}.yaml")
    spec = entry.feature_spec(config)
    spec.key(), spec.weights(), [w.key() for w in entry.pretrained_weights(config)]
    entry.nfe(config), entry.training_hash(config), entry.pretrain_hash(config), entry.has_pretrain
heavy = %r
print(json.dumps(sorted(name for name in sys.modules if name.split(".")[0] in heavy)))
""" % (HEAVY,)


def run_python(code: str, *args: str) -> str:
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_every_module_imports_on_its_own():
    modules = [m.name for m in pkgutil.walk_packages(anodiff.__path__, "anodiff.")]
    assert {"anodiff.training", "anodiff.methods.spec", "anodiff.methods.d3ad.method"} <= set(modules)
    failures = json.loads(run_python(EACH_MODULE_ON_ITS_OWN, json.dumps(["anodiff", *modules])))
    assert not failures, "modules that fail to import on their own:\n" + "\n".join(
        f"--- {module}\n{trace}" for module, trace in failures.items())


def test_planning_every_method_imports_no_heavy_library():
    assert json.loads(run_python(PLAN_EVERY_METHOD)) == []
