"""Snakemake script: inference throughput of one variant (the FPS tables)."""
from anodiff.pipeline import JobEnvironment, fps_benchmark, setup_job

setup_job(snakemake.log[0], snakemake.threads)
w = snakemake.wildcards
fps_benchmark(
    method=w.method,
    config=snakemake.params.config,
    settings=snakemake.params.settings,
    output=snakemake.output[0],
    run={"dataset": w.dataset, "method": w.method, "variant": w.variant, "setting": snakemake.params.setting},
    env=JobEnvironment.from_config(snakemake.config),
    weights_status=list(snakemake.input.weights),
)
