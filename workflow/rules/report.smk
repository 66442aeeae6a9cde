rule figures:
    """Qualitative grid (image / ground truth / map) and per-category metric chart."""
    input:
        predictions=lambda w: outputs_of([run_of(w)], paths.PREDICTIONS),
        table=paths.METRIC_TABLE,
        report=lambda w: report_of(w.dataset),
        weights=lambda w: weights_status(run_of(w).weights),
    output:
        qualitative=report(
            paths.RUN_FIGURE.replace("{name}", "qualitative"),
            caption="../report/qualitative.rst",
            category="Qualitative",
        ),
        metrics=report(
            paths.RUN_FIGURE.replace("{name}", "metrics"),
            caption="../report/metrics.rst",
            category="Metrics",
        ),
    log:
        paths.log("figures", "{dataset}/{method}/{variant}"),
    benchmark:
        paths.benchmark("figures", "{dataset}/{method}/{variant}")
    conda:
        ENV
    script:
        "../scripts/figures.py"
