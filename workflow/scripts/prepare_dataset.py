"""Snakemake script: generate, download or check a dataset, then validate it (see anodiff.pipeline)."""
from anodiff.pipeline import prepare_dataset, setup_job

setup_job(snakemake.log[0], snakemake.threads)
prepare_dataset(dataset=snakemake.wildcards.dataset, dataset_config=snakemake.params.dataset_config,
                report_path=snakemake.output.report)
