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
