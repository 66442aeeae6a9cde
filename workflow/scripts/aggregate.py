"""Snakemake script: the dataset x method x variant x category metrics table."""
from anodiff.pipeline import aggregate, setup_job

setup_job(snakemake.log[0], snakemake.threads)
aggregate(metric_files=list(snakemake.input.metrics), fps_files=list(snakemake.input.fps),
          table_path=snakemake.output.table, markdown_path=snakemake.output.markdown,
          html_path=snakemake.output.html, csv_path=snakemake.output.csv)
