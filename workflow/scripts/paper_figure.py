"""Snakemake script: one paper figure from our runs."""
from anodiff.pipeline import paper_figure, setup_job

setup_job(snakemake.log[0], snakemake.threads)
paper_figure(
    figure_id=f"{snakemake.wildcards.paper}/{snakemake.wildcards.figure}",
    figure=snakemake.params.figure,
    metric_files=list(snakemake.input.metrics),
    fps_files=list(snakemake.input.fps),
    prediction_files=list(snakemake.input.predictions),
    report=snakemake.input.report,
    table_files=list(snakemake.input.tables),
    outputs=[snakemake.output.png, snakemake.output.pdf],
    weights_status=list(snakemake.input.weights),
)
