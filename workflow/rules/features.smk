rule fetch_weights:
    """Download one pretrained network into weights_dir (needs network; runs first)."""
    output:
        status=paths.WEIGHTS_STATUS.replace("{weights_dir}", config["weights_dir"]),
    params:
        weights=of_wildcards(lambda w: PLAN.weights[w.weights_key]),
    log:
        paths.log("fetch_weights", "{weights_key}"),
    benchmark:
        paths.benchmark("fetch_weights", "{weights_key}")
    conda:
        ENV
    script:
        "../scripts/fetch_weights.py"


rule cache_features:
    """Frozen-backbone features of one split of one category, computed once and reused."""
    input:
        unpack(INPUTS.cache),
    output:
        paths.FEATURE_CACHE,
    params:
        spec=of_wildcards(lambda w: PLAN.feature_specs[w.spec_key]),
        data=DATA.cache,  # its images: a replaced one re-runs this cache and what follows
    resources:  # anodiff.budget
        **estimated_resources("cache_features"),
    log:
        paths.log("cache_features", "{images}/{spec_key}/{category}_{split}"),
    benchmark:
        paths.benchmark("cache_features", "{images}/{spec_key}/{category}_{split}")
    conda:
        ENV
    script:
        "../scripts/cache_features.py"
