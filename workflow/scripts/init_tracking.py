"""Snakemake script: create the MLflow store and experiment before parallel jobs use it."""
from anodiff.pipeline import JobEnvironment, init_tracking, setup_job

setup_job(snakemake.log[0], snakemake.threads)
init_tracking(env=JobEnvironment.from_config(snakemake.config), output=snakemake.output[0])
