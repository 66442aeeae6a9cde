"""The ``anodiff`` command, run in-process on a results folder fabricated from small parquet
files (no workflow run), and once as a subprocess."""

import copy
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from anodiff import cli, paths, tables
from anodiff.config import load_yaml
from anodiff.methods import REGISTRY
from anodiff.plan import build_plan
from anodiff.reported import load_table

CATEGORIES = ["weave", "chip"]


@pytest.fixture(scope="module")
def configfile(tmp_path_factory):
    """The demo config cut to two methods (their demo variants), two categories and one paper table."""
    config = copy.deepcopy(load_yaml(cli.DEFAULT_CONFIG))
    config["datasets"]["synthetic"]["categories"] = CATEGORIES
    config["methods"] = {m: {"demo": config["methods"][m]["demo"]} for m in ("inversion", "patchcore")}
    config["tables"] = {"inversion/table2": {
        "caption": "InversionAD Table 2 (demo: synthetic data as MVTec-AD)", "protocol": "Ours: exact AUROC.",
        "rows": [{"reported": "InversionAD (S=2)", "method": "inversion", "variant": "demo",
                  "datasets": {"mvtec_ad": "synthetic"}}]}}
    config["figures"] = {}
    path = tmp_path_factory.mktemp("config") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _metrics(method, category, auroc):
    return pd.DataFrame([{"dataset": "synthetic", "method": method, "variant": "demo", "setting": "per_class",
                          "category": category, "n_test_images": 20, "n_anomalous": 8,
                          **{m: auroc for m in ("image_auroc", "image_ap", "image_f1max", "pixel_auroc",
                                                "pixel_ap", "pixel_f1max", "aupro", "mad")},
                          "fps": 12.0, "device": "cpu (2 cores)", "mlflow_run_id": "abc"}])


def _write_metrics(root, method, category, auroc):
    path = root / paths.fill(paths.METRICS, dataset="synthetic", method=method, variant="demo", category=category)
    path.parent.mkdir(parents=True, exist_ok=True)
    _metrics(method, category, auroc).to_parquet(path)
    return path


@pytest.fixture
def results(tmp_path, configfile):
    """A results folder: inversion fully evaluated and its paper table built; patchcore half evaluated."""
    for category, auroc in zip(CATEGORIES, (0.9, 0.7)):
        _write_metrics(tmp_path, "inversion", category, auroc)
    _write_metrics(tmp_path, "patchcore", "weave", 0.95)
    fps = tmp_path / paths.fill(paths.FPS, dataset="synthetic", method="inversion", variant="demo")
    fps.parent.mkdir(parents=True)
    pd.DataFrame([{"dataset": "synthetic", "method": "inversion", "variant": "demo", "images_per_second": 4.0,
                   "seconds_per_image": 0.25, "nfe": 2, "device": "cpu (2 cores)"}]).to_parquet(fps)
    frame = pd.concat([_metrics("inversion", c, a) for c, a in zip(CATEGORIES, (0.9, 0.7))], ignore_index=True)
    metric_table = tables.with_means(frame)
    (tmp_path / paths.METRIC_TABLE).parent.mkdir(parents=True, exist_ok=True)
    metric_table.to_parquet(tmp_path / paths.METRIC_TABLE)
    plan = build_plan(load_yaml(configfile), cli.REPO)
    spec = plan.tables["inversion/table2"]
    built = tables.build_table(load_table("inversion", "table2"),
                               [tables.RowSource.from_config(r) for r in spec["rows"]],
                               tables.our_numbers(frame, pd.read_parquet(fps)))
    out = {e: tmp_path / paths.fill(paths.PAPER_TABLE, paper="inversion", table="table2", ext=e)
           for e in paths.PAPER_TABLE_EXTENSIONS}
    tables.write_table(built, out["parquet"], out["md"], out["tex"], spec["caption"], spec["protocol"],
                       csv_path=out["csv"], html_path=out["html"])
    return tmp_path


def run(capsys, *argv):
    """``anodiff argv``: (exit status, stdout, stderr)."""
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_help_from_a_subprocess_lists_every_command():
    done = subprocess.run([sys.executable, "-m", "anodiff.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for command in ("methods", "datasets", "config", "results", "table", "export", "status"):
        assert command in done.stdout


@pytest.mark.parametrize("command, explains", [
    ("methods", "share trained weights"), ("datasets", "how each is obtained"), ("config", "training hash"),
    ("results", "per category"), ("table", "reported / reproduced"), ("export", "as CSV"),
    ("status", "waits for"),
])
def test_every_command_explains_itself(capsys, command, explains):
    with pytest.raises(SystemExit) as done:
        cli.main([command, "--help"])
    assert done.value.code == 0 and explains in capsys.readouterr().out.replace("\n", " ")


def test_the_table_formats_are_the_renderers(capsys):
    assert cli.TABLE_FORMATS == sorted(tables.FORMATS)


def test_methods_and_datasets(capsys):
    status, out, _ = run(capsys, "methods")
    assert status == 0 and all(key in out for key in REGISTRY) and "config/methods/inversion.yaml" in out
    status, out, _ = run(capsys, "datasets")
    assert status == 0 and "synthetic" in out and "visa" in out and "SHA-256 checked" in out and "by hand" in out
    status, out, _ = run(capsys, "datasets", "visa")
    assert status == 0 and "categories (12): candle" in out
    status, _, err = run(capsys, "datasets", "nope")
    assert status == 1 and "known: mvtec_ad" in err


def test_config_shows_defaults_or_a_variant_resolved_with_its_training_hash(capsys, configfile, tmp_path):
    plan = build_plan(load_yaml(configfile), cli.REPO)
    demo = plan.run("synthetic", "inversion", "demo")
    status, out, _ = run(capsys, "config", "inversion", "--variant", "demo", "--configfile", configfile)
    assert status == 0 and yaml.safe_load(out) == demo.config
    assert f"# training hash: {demo.training_hash}" in out and "runs on: synthetic (per_class)" in out
    status, out, _ = run(capsys, "config", "inversion")
    assert status == 0 and yaml.safe_load(out)["backbone"]["image_size"] == 256  # the paper's value
    # later config files update earlier ones key by key, as with snakemake --configfile
    override = tmp_path / "more.yaml"
    override.write_text("methods: {inversion: {demo: {overrides: {training: {epochs: 7}}}}}\n")
    status, out, _ = run(capsys, "config", "inversion", "--variant", "demo", "--configfile", configfile, override)
    resolved = yaml.safe_load(out)
    assert resolved["training"]["epochs"] == 7 and resolved["backbone"]["image_size"] == 64
    status, _, err = run(capsys, "config", "inversion", "--variant", "nope", "--configfile", configfile)
    assert status == 1 and "configured variants of inversion: demo" in err
    status, _, err = run(capsys, "config", "nope")
    assert status == 1 and "registered methods" in err
    status, _, err = run(capsys, "config", "inversion", "--variant", "demo", "--configfile", tmp_path / "none.yaml")
    assert status == 1 and "config file not found" in err


def test_results_of_the_metric_table_and_of_one_run(capsys, results, configfile):
    status, out, _ = run(capsys, "results", "-d", results, "--configfile", configfile)
    assert status == 0 and "image AUROC (%)" in out and "FPS (images/s)" in out
    mean = next(line for line in out.splitlines() if " mean " in line)
    assert "80.0" in mean  # (90 + 70) / 2, in %
    status, out, _ = run(capsys, "results", "-d", results, "--configfile", configfile,
                         "--run", "synthetic/patchcore/demo")
    assert status == 0 and "1 of 2 categories not evaluated yet: chip" in out and "95.0" in out
    status, _, err = run(capsys, "results", "-d", results, "--configfile", configfile, "--run", "synthetic/diad/demo")
    assert status == 1 and "not a configured run" in err
    status, _, err = run(capsys, "results", "-d", results.parent, "--configfile", configfile,
                         "--run", "synthetic/patchcore/demo")
    assert status == 1 and "no metrics yet: rule evaluate writes results/synthetic/patchcore/demo/metrics/" in err
    (results / paths.METRIC_TABLE).unlink()
    status, _, err = run(capsys, "results", "-d", results, "--configfile", configfile)
    assert status == 1 and "rule aggregate" in err and "--configfile" in err


def test_table_prints_a_built_table_and_names_the_rule_of_a_missing_one(capsys, results):
    status, out, _ = run(capsys, "table", "inversion/table2", "-d", results)
    assert status == 0 and out.startswith("InversionAD Table 2 (demo") and "Protocol: Ours: exact AUROC." in out
    assert "image AUROC (%)" in out and "reported only" in out
    status, out, _ = run(capsys, "table", "inversion/table2", "-d", results, "--format", "latex")
    assert status == 0 and r"\label{tab:inversion-table2}" in out
    status, _, err = run(capsys, "table", "inversion/table9", "-d", results)
    assert status == 1 and "rule paper_table" in err and "built tables: inversion/table2" in err


def test_export_writes_every_built_table_as_csv(capsys, results, tmp_path_factory):
    status, out, _ = run(capsys, "export", "--format", "csv", "-d", results)
    written = out.split()
    assert status == 0 and len(written) == 2
    beside = results / paths.fill(paths.PAPER_TABLE, paper="inversion", table="table2", ext="csv")
    assert str(beside) in written
    parquet = pd.read_parquet(beside.with_suffix(".parquet"))
    assert len(pd.read_csv(beside)) == len(parquet) and list(pd.read_csv(beside).columns) == tables.COLUMNS
    out_dir = tmp_path_factory.mktemp("export")
    status, out, _ = run(capsys, "export", "-d", results, "--out", out_dir)
    assert status == 0 and (out_dir / "metrics.csv").is_file() and (out_dir / "inversion" / "table2.csv").is_file()
    status, _, err = run(capsys, "export", "-d", out_dir)
    assert status == 1 and "rules aggregate" in err


def test_status_says_which_tables_are_complete_and_which_runs_miss_metrics(capsys, results, configfile):
    status, out, _ = run(capsys, "status", "-d", results, "--configfile", configfile)
    assert status == 0
    assert "inversion/table2  complete" in out
    assert "synthetic/patchcore/demo" in out and "1/2" in out and "chip" in out
    assert "runs with every category evaluated: 1 of 2" in out
    _write_metrics(results, "inversion", "chip", 0.75)  # newer than the built table
    status, out, _ = run(capsys, "status", "-d", results, "--configfile", configfile)
    assert "inversion/table2  built, older than its inputs" in out
    (results / paths.fill(paths.PAPER_TABLE, paper="inversion", table="table2", ext="tex")).unlink()
    status, out, _ = run(capsys, "status", "-d", results, "--configfile", configfile)
    assert "inversion/table2  ready to build" in out
    (results / paths.fill(paths.FPS, dataset="synthetic", method="inversion", variant="demo")).unlink()
    status, out, _ = run(capsys, "status", "-d", results, "--configfile", configfile)
    assert "inversion/table2  waiting for 1 run(s): synthetic/inversion/demo" in out  # its speed (rule fps)


def test_plan_commands_import_no_torch(configfile, tmp_path):
    script = (f"import sys\nfrom anodiff.cli import main\n"
              f"for argv in (['methods'], ['datasets'], ['config', 'inversion', '--variant', 'demo', '--configfile', "
              f"{str(configfile)!r}], ['status', '-d', {str(tmp_path)!r}, '--configfile', {str(configfile)!r}]):\n"
              f"    assert main(argv) == 0\n"
              f"assert 'torch' not in sys.modules, 'torch imported'\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
