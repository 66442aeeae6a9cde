rule fps:
    """Inference images/s of one variant at its resolution, batch 64 (DPDiff-AD Table 4)."""
    input:
        weights=lambda w: weights_status(run_of(w).weights),
    output:
        paths.FPS,
    params:
        config=param("config"),
        setting=param("setting"),
        nfe=param("nfe"),
        settings=config["fps"],
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
        unpack(get_table_inputs),
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
        table=lambda w: PLAN.tables[f"{w.paper}/{w.table}"],
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
        unpack(get_figure_inputs),
    output:
        png=report(
            paths.PAPER_FIGURE.replace("{ext}", "png"),
            caption="../report/paper_figure.rst",
            category="Paper figures",
            subcategory="{paper}",
        ),
        pdf=paths.PAPER_FIGURE.replace("{ext}", "pdf"),
    params:
        figure=lambda w: PLAN.figures[f"{w.paper}/{w.figure}"],
    log:
        paths.log("paper_figure", "{paper}/{figure}"),
    benchmark:
        paths.benchmark("paper_figure", "{paper}/{figure}")
    conda:
        ENV
    script:
        "../scripts/paper_figure.py"
