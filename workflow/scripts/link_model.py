"""Snakemake script: point a variant at the weights it scores, calibrated if the method needs it."""
from anodiff.pipeline import JobEnvironment, link_model, setup_job

setup_job(snakemake.log[0], snakemake.threads)
w = snakemake.wildcards
link_model(
    method=w.method,
    config=snakemake.params.config,
    training_hash=snakemake.params.training_hash,
    model_path=snakemake.input.model,
    owner_run_info=snakemake.input.owner_run,
    output=snakemake.output[0],
    run={"dataset": w.dataset, "variant": w.variant, "group": w.group, "setting": snakemake.params.setting},
    env=JobEnvironment.from_config(snakemake.config),
    train_caches=list(snakemake.input.get("caches", [])),
    weights_status=list(snakemake.input.weights),
    features=snakemake.params.features,
    report=snakemake.input.get("report"),
)
