rule infer:
    """Anomaly maps and image scores of every test image of one category."""
    input:
        unpack(INPUTS.infer),
    output:
        paths.PREDICTIONS,
    params:
        config=param("config"),
        training_hash=param("training_hash"),
        features=DATA.test_features,  # features.cache: none: the spec and images it extracts from
    resources:  # anodiff.budget
        **estimated_resources("infer"),
    log:
        paths.log("infer", "{dataset}/{method}/{variant}/{category}"),
    benchmark:
        paths.benchmark("infer", "{dataset}/{method}/{variant}/{category}")
    conda:
        ENV
    script:
        "../scripts/infer.py"
