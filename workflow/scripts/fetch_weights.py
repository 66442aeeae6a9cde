"""Snakemake script: download one pretrained network (the one job that needs network)."""
from anodiff.pipeline import JobEnvironment, fetch_weights, setup_job

setup_job(snakemake.log[0], snakemake.threads)
fetch_weights(weights=snakemake.params.weights, env=JobEnvironment.from_config(snakemake.config),
              status_path=snakemake.output.status, lock_path=snakemake.config["weights_lock"])
