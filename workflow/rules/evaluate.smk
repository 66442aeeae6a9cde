rule evaluate:
    """All metrics of one category (exact AUROC/AP/F1-max, AUPRO, mAD) into parquet."""
    input:
        unpack(INPUTS.evaluate),
    output:
        paths.METRICS,
    params:
        setting=param("setting"),
        config=param("config"),  # logged with the MLflow run; any change re-runs infer anyway
        evaluation=config["evaluation"],
        paper_protocol=param("protocol_text"),  # "" for an honest run
        data=DATA.evaluate,  # its test images and masks: a fixed mask re-runs the metrics only
    log:
        paths.log("evaluate", "{dataset}/{method}/{variant}/{category}"),
    benchmark:
        paths.benchmark("evaluate", "{dataset}/{method}/{variant}/{category}")
    conda:
        ENV
    script:
        "../scripts/evaluate.py"


rule score_candidates:
    """A paper protocol's candidates that no table or figure prints (DiAD's 39 checkpoints), on
    one category in one job: each one's inference and metrics, as its infer and evaluate jobs
    would; the rows select_on_test chooses among (anodiff.plan.Plan.scorer)."""
    input:
        unpack(INPUTS.score_candidates),
    output:
        paths.CANDIDATE_METRICS,
    params:
        candidates=of_wildcards(lambda w: PLAN.candidate_params(w.dataset, w.method, w.variant)),
        evaluation=config["evaluation"],
        data=DATA.evaluate,  # its test images and masks
        features=DATA.candidate_features,  # features.cache: none: what each candidate extracts from
    resources:  # anodiff.budget
        **estimated_resources("score_candidates"),
    log:
        paths.log("score_candidates", "{dataset}/{method}/{variant}/{category}"),
    benchmark:
        paths.benchmark("score_candidates", "{dataset}/{method}/{variant}/{category}")
    conda:
        ENV
    script:
        "../scripts/score_candidates.py"


rule select_on_test:
    """A paper-protocol run: on each category, the candidate variant with the best TEST metric
    (the papers' per-category choices, e.g. InversionAD's "Ours*"), or the best by the mean over
    categories, AUROCs below 0.5 flipped where asked (DiAD); protocol = paper. One job per run,
    a row per category."""
    input:
        INPUTS.selection,
    output:
        paths.SELECTED_METRICS,
    params:
        select_by=param("select_by"),
        per=param("select_per"),
        flip_auroc=param("flip_auroc"),
        variants=of_wildcards(lambda w: list(PLAN.run(w.dataset, w.method, w.variant).selects)),
    log:
        paths.log("select_on_test", "{dataset}/{method}/{variant}"),
    benchmark:
        paths.benchmark("select_on_test", "{dataset}/{method}/{variant}")
    conda:
        ENV
    script:
        "../scripts/select_on_test.py"


rule aggregate:
    """The dataset x method x variant x category table, with a mean row per run and each run's fps."""
    input:
        unpack(INPUTS.aggregate),
    output:
        table=paths.METRIC_TABLE,
        markdown=paths.METRIC_MARKDOWN,
        html=report(paths.METRIC_HTML, caption="../report/metric_table.rst", category="Metric table"),
        csv=paths.METRIC_CSV,
    log:
        paths.log("aggregate", "aggregate"),
    benchmark:
        paths.benchmark("aggregate", "aggregate")
    conda:
        ENV
    script:
        "../scripts/aggregate.py"
