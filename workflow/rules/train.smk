rule pretrain:
    """A method's stage before training, as its own job (DiAD: fine-tune the autoencoder); one
    job per distinct pretrain config, shared by every variant with the same pretrain hash."""
    input:
        unpack(INPUTS.group),
    output:
        paths.PRETRAINED,
    params:
        config=param("pretrain_config"),
        seed=config["seed"],
        features=DATA.train_features,  # features.cache: none: the spec and images it extracts from
    resources:  # anodiff.budget
        **estimated_resources("pretrain"),
    log:
        paths.log("pretrain", "{dataset}/{method}/{variant}/{group}"),
    benchmark:
        paths.benchmark("pretrain", "{dataset}/{method}/{variant}/{group}")
    conda:
        ENV
    script:
        "../scripts/pretrain.py"


rule train:
    """Fit one model (a category, or all categories when unified) on cached features (or, with
    features.cache: none, features extracted from the images on the fly). Its params are the
    training slice of the config: an inference-only edit never re-trains."""
    input:
        unpack(INPUTS.train),
    output:
        model=paths.MODEL,
        run_info=paths.MODEL_RUN_INFO,
    params:
        config=param("training_config"),
        setting=param("setting"),
        seed=config["seed"],
        snapshot_epochs=param("snapshot_epochs"),  # kept for variants that score a checkpoint
        features=DATA.train_features,  # features.cache: none: the spec and images it extracts from
    resources:  # anodiff.budget
        **estimated_resources("train"),
    log:
        paths.log("train", "{dataset}/{method}/{variant}/{group}"),
    benchmark:
        paths.benchmark("train", "{dataset}/{method}/{variant}/{group}")
    conda:
        ENV
    script:
        "../scripts/train.py"


rule link_model:
    """Point a variant at the weights it scores (its owner's, anodiff.plan) without copying
    them, and compute the detector's inference-dependent training statistics (calibration)."""
    input:
        unpack(INPUTS.link),
    output:
        paths.LINK,
    params:
        config=param("config"),
        training_hash=param("training_hash"),
        setting=param("setting"),
        features=DATA.train_features,  # (calibration) features.cache: none: what it extracts from
    resources:  # anodiff.budget
        **estimated_resources("link_model"),
    log:
        paths.log("link_model", "{dataset}/{method}/{variant}/{group}"),
    benchmark:
        paths.benchmark("link_model", "{dataset}/{method}/{variant}/{group}")
    conda:
        ENV
    script:
        "../scripts/link_model.py"
