"""Snakemake script: the run's one fps (trained model, real test images, end to end)."""
from anodiff.pipeline import JobEnvironment, fps_benchmark, setup_job

setup_job(snakemake.log[0], snakemake.threads)
w = snakemake.wildcards
fps_benchmark(
    method=w.method,
    config=snakemake.params.config,
    training_hash=snakemake.params.training_hash,
    model_path=snakemake.input.model,
    link_path=snakemake.input.get("link"),
    report=snakemake.input.report,
    category=snakemake.params.category,
    settings=snakemake.params.settings,
    output=snakemake.output[0],
    run={"dataset": w.dataset, "method": w.method, "variant": w.variant, "setting": snakemake.params.setting},
    env=JobEnvironment.from_config(snakemake.config),
    weights_status=list(snakemake.input.weights),
)
