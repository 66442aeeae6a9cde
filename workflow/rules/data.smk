rule prepare_dataset:
    """Generate, download or check a dataset, index it for the loader; validate every file.

    Real datasets (source mvtec_ad, visa, btad, mpdd, real_iad, real_iad_variety) are fetched
    into download_dir and unpacked to <root>/raw; on a problem the report goes to
    results/datasets/{dataset}/validation.failed.json and the job fails (README "Real datasets").
    """
    output:
        report=paths.VALIDATION_REPORT,
    params:
        dataset_config=of_wildcards(lambda w: PLAN.datasets[w.dataset]),
    priority: 100  # every dataset is checked before any training starts: bad data fails first
    log:
        paths.log("prepare_dataset", "{dataset}"),
    benchmark:
        paths.benchmark("prepare_dataset", "{dataset}")
    conda:
        ENV
    script:
        "../scripts/prepare_dataset.py"


rule init_tracking:
    """Create the MLflow store and experiment once, before parallel jobs write to it."""
    output:
        paths.TRACKING_STAMP,
    log:
        paths.log("init_tracking", "init_tracking"),
    benchmark:
        paths.benchmark("init_tracking", "init_tracking")
    conda:
        ENV
    script:
        "../scripts/init_tracking.py"
