"""Snakemake script: one paper table, reproduced beside reported; tags the MLflow runs it reads."""
from anodiff.pipeline import JobEnvironment, paper_table, setup_job

setup_job(snakemake.log[0], snakemake.threads)
paper_table(
    table_id=f"{snakemake.wildcards.paper}/{snakemake.wildcards.table}",
    table=snakemake.params.table,
    metric_files=list(snakemake.input.metrics),
    fps_files=list(snakemake.input.fps),
    outputs=dict(snakemake.output.items()),
    env=JobEnvironment.from_config(snakemake.config),
)
