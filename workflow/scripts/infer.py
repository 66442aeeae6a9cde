"""Snakemake script: anomaly maps and image scores of one category's test images."""
from anodiff.pipeline import JobEnvironment, infer, setup_job

setup_job(snakemake.log[0], snakemake.threads)
infer(
    method=snakemake.wildcards.method,
    config=snakemake.params.config,
    training_hash=snakemake.params.training_hash,
    model_path=snakemake.input.model,
    link_path=snakemake.input.get("link"),
    test_cache=snakemake.input.get("cache"),
    output=snakemake.output[0],
    env=JobEnvironment.from_config(snakemake.config),
    features=snakemake.params.features,
    report=snakemake.input.get("report"),
)
