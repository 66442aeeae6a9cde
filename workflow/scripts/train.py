"""Snakemake script (rules train and reuse_model): fit one model, or reuse another variant's
weights (input ``shared``), and log the run to MLflow."""
from anodiff.pipeline import setup_job, train

setup_job(snakemake.log[0], snakemake.threads)
train(
    snakemake.wildcards.method,
    snakemake.params.defaults_file,
    snakemake.params.overrides,
    list(snakemake.input.caches),
    snakemake.output.model,
    snakemake.output.run_info,
    snakemake.params.tracking,
    snakemake.params.tags,
    snakemake.params.weights_dir,
    snakemake.input.get("pretrained"),
    snakemake.params.seed,
    snakemake.params.device,
    snakemake.input.get("shared"),
)
