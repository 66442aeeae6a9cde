"""Snakemake script: a method's pretrain stage (e.g. DiAD's autoencoder fine-tuning)."""
from anodiff.pipeline import JobEnvironment, pretrain, setup_job

setup_job(snakemake.log[0], snakemake.threads)
pretrain(
    method=snakemake.wildcards.method,
    config=snakemake.params.config,
    train_caches=list(snakemake.input.get("caches", [])),  # none without a cache (report)
    output=snakemake.output[0],
    run={"dataset": snakemake.wildcards.dataset, "variant": snakemake.wildcards.variant,
         "group": snakemake.wildcards.group},
    env=JobEnvironment.from_config(snakemake.config),
    seed=snakemake.params.seed,
    features=snakemake.params.features,
    report=snakemake.input.get("report"),
)
