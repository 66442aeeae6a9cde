"""Snakemake script: a paper protocol's candidates on one category, inferred and evaluated in one job."""
from anodiff.pipeline import Candidate, JobEnvironment, score_candidates, setup_job

setup_job(snakemake.log[0], snakemake.threads)
w = snakemake.wildcards
inputs = snakemake.input
score_candidates(
    candidates=[Candidate(run={"dataset": w.dataset, "method": w.method, "variant": variant,
                               "setting": params["setting"]},
                          config=params["config"], training_hash=params["training_hash"],
                          protocol_text=params["protocol_text"], model_path=inputs.get(f"{variant}/model"),
                          run_info=inputs.get(f"{variant}/run_info"), link_path=inputs.get(f"{variant}/link"),
                          test_cache=inputs.get(f"{variant}/cache"), features=snakemake.params.features[variant])
                for variant, params in snakemake.params.candidates.items()],
    report=snakemake.input.report,
    category=w.category,
    output=snakemake.output[0],
    env=JobEnvironment.from_config(snakemake.config),
    evaluation=snakemake.params.evaluation,
)
