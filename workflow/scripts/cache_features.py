"""Snakemake script: frozen-backbone features of one split of one category."""
from anodiff.pipeline import JobEnvironment, cache_features, setup_job

setup_job(snakemake.log[0], snakemake.threads)
cache_features(
    spec=snakemake.params.spec,
    report=snakemake.input.report,
    category=snakemake.wildcards.category,
    split=snakemake.wildcards.split,
    output=snakemake.output[0],
    env=JobEnvironment.from_config(snakemake.config),
)
