rule fps:
    """The run's one fps: its trained model on real test images, end to end (host-to-device copy,
    backbone, method), batch 64 after a warm-up batch (anodiff.throughput.time_predictions)."""
    input:
        unpack(INPUTS.fps),
    output:
        paths.FPS,
    params:
        config=param("config"),
        training_hash=param("training_hash"),
        setting=param("setting"),
        category=of_wildcards(lambda w: PLAN.run(w.dataset, w.method, w.variant).categories[0]),
        settings=config["fps"],
        data=DATA.fps,  # the test images it times
    log:
        paths.log("fps", "{dataset}/{method}/{variant}"),
    benchmark:
        paths.benchmark("fps", "{dataset}/{method}/{variant}")
    conda:
        ENV
    script:
        "../scripts/fps.py"


rule paper_table:
    """One paper table: the printed numbers with ours beside them, the difference, bold best;
    the MLflow runs it reads get the tags tables.<paper>/<table> and papers.<paper>."""
    input:
        unpack(INPUTS.table),
    output:
        parquet=paths.PAPER_TABLE.replace("{ext}", "parquet"),
        markdown=paths.PAPER_TABLE.replace("{ext}", "md"),
        latex=paths.PAPER_TABLE.replace("{ext}", "tex"),
        csv=paths.PAPER_TABLE.replace("{ext}", "csv"),
        html=report(
            paths.PAPER_TABLE.replace("{ext}", "html"),
            caption="../report/paper_table.rst",
            category="Paper tables",
            subcategory="{paper}",
        ),
    params:
        table=of_wildcards(lambda w: PLAN.tables[f"{w.paper}/{w.table}"]),
    log:
        paths.log("paper_table", "{paper}/{table}"),
    benchmark:
        paths.benchmark("paper_table", "{paper}/{table}")
    conda:
        ENV
    script:
        "../scripts/paper_table.py"


rule paper_figure:
    """One paper figure from our runs (a sweep, a histogram, accuracy vs FPS, a map grid)."""
    input:
        unpack(INPUTS.figure),
    output:
        png=report(
            paths.PAPER_FIGURE.replace("{ext}", "png"),
            caption="../report/paper_figure.rst",
            category="Paper figures",
            subcategory="{paper}",
        ),
        pdf=paths.PAPER_FIGURE.replace("{ext}", "pdf"),
    params:
        figure=of_wildcards(lambda w: PLAN.figures[f"{w.paper}/{w.figure}"]),
    log:
        paths.log("paper_figure", "{paper}/{figure}"),
    benchmark:
        paths.benchmark("paper_figure", "{paper}/{figure}")
    conda:
        ENV
    script:
        "../scripts/paper_figure.py"
