"""Snakemake script: fit one model on its training slice of the config; log it to MLflow."""
from anodiff.pipeline import JobEnvironment, setup_job, train

setup_job(snakemake.log[0], snakemake.threads)
w = snakemake.wildcards
train(
    method=w.method,
    config=snakemake.params.config,
    train_caches=list(snakemake.input.get("caches", [])),  # none without a cache (report)
    model_path=snakemake.output.model,
    run_info_path=snakemake.output.run_info,
    run={"dataset": w.dataset, "variant": w.variant, "group": w.group, "setting": snakemake.params.setting},
    env=JobEnvironment.from_config(snakemake.config),
    pretrained_path=snakemake.input.get("pretrained"),
    seed=snakemake.params.seed,
    weights_status=list(snakemake.input.weights),
    snapshot_epochs=list(snakemake.params.snapshot_epochs),
    features=snakemake.params.features,
    report=snakemake.input.get("report"),
)
