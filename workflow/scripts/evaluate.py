"""Snakemake script: metrics of one category into parquet, logged to MLflow."""
from anodiff.pipeline import JobEnvironment, evaluate, setup_job

setup_job(snakemake.log[0], snakemake.threads)
w = snakemake.wildcards
evaluate(
    predictions=snakemake.input.predictions,
    report=snakemake.input.report,
    category=w.category,
    output=snakemake.output[0],
    run_info=snakemake.input.run_info,
    run={"dataset": w.dataset, "method": w.method, "variant": w.variant, "setting": snakemake.params.setting},
    env=JobEnvironment.from_config(snakemake.config),
    config=snakemake.params.config,
    evaluation=snakemake.params.evaluation,
    paper_protocol=snakemake.params.paper_protocol,
)
