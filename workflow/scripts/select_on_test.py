"""Snakemake script: a paper-protocol run's metrics, chosen among its candidates on the test set."""
from anodiff.pipeline import JobEnvironment, select_on_test, setup_job

setup_job(snakemake.log[0], snakemake.threads)
w = snakemake.wildcards
select_on_test(
    candidate_files=list(snakemake.input),
    select_by=snakemake.params.select_by,
    output=snakemake.output[0],
    run={"dataset": w.dataset, "method": w.method, "variant": w.variant},
    env=JobEnvironment.from_config(snakemake.config),
    per=snakemake.params.per,
    flip_auroc=snakemake.params.flip_auroc,
    variants=snakemake.params.variants,
)
