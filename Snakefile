# anodiff: diffusion-based industrial anomaly detection, from raw datasets to tables.
# Run: snakemake --cores 2        (embedded synthetic demo; see README.md)
from snakemake.utils import min_version

min_version("9.0")


# The embedded demo, unless a config is given on the command line: then that config alone
# (e.g. --configfile config/datasets.yaml config/paper.yaml) says what to run.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/features.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/infer.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/tables.smk"


# Under a cluster executor these run on the submitting (login) node: fetch_weights needs the
# network that compute nodes often lack, init_tracking only creates the MLflow store.
localrules:
    fetch_weights,
    init_tracking,


rule all:
    input:
        JOB_INPUTS.all_outputs(),
    default_target: True


onsuccess:
    from anodiff.tables import run_summary

    print(run_summary(Path(paths.METRIC_TABLE)))
