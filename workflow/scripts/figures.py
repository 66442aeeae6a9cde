"""Snakemake script: qualitative grid and per-category metric chart of one run."""
from anodiff.pipeline import JobEnvironment, figures, setup_job

setup_job(snakemake.log[0], snakemake.threads)
w = snakemake.wildcards
figures(
    prediction_files=list(snakemake.input.predictions),
    metric_files=list(snakemake.input.metrics),
    report=snakemake.input.report,
    qualitative_path=snakemake.output.qualitative,
    metrics_chart_path=snakemake.output.metrics,
    run={"dataset": w.dataset, "method": w.method, "variant": w.variant},
    env=JobEnvironment.from_config(snakemake.config),
)
