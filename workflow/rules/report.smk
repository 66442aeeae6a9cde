rule figures:
    """Qualitative grid (image / ground truth / map) and per-category metric chart."""
    input:
        unpack(INPUTS.run_figures),
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
