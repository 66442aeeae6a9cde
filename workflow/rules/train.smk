rule pretrain:
    """A method's stage before training, as its own job (DiAD: fine-tune the autoencoder)."""
    input:
        unpack(get_pretrain_inputs),
    output:
        f"{RUN_DIR}/models/{{group}}.pretrain.pt",
    params:
        defaults_file=get_defaults_file,
        overrides=get_overrides,
        weights_dir=config["weights_dir"],
        seed=config["seed"],
        device=config["device"],
    log:
        "results/logs/pretrain/{dataset}/{method}/{variant}/{group}.log",
    benchmark:
        "results/benchmarks/pretrain/{dataset}/{method}/{variant}/{group}.tsv"
    conda:
        ENV
    script:
        "../scripts/pretrain.py"


rule train:
    """Fit one model (a category, or all categories when unified) on cached features."""
    input:
        unpack(get_train_inputs),
    output:
        model=f"{RUN_DIR}/models/{{group}}.pt",
        run_info=f"{RUN_DIR}/models/{{group}}.run.json",
    params:
        defaults_file=get_defaults_file,
        overrides=get_overrides,
        tracking=tracking_config(),
        tags=get_train_tags,
        weights_dir=config["weights_dir"],
        seed=config["seed"],
        device=config["device"],
    log:
        "results/logs/train/{dataset}/{method}/{variant}/{group}.log",
    benchmark:
        "results/benchmarks/train/{dataset}/{method}/{variant}/{group}.tsv"
    conda:
        ENV
    script:
        "../scripts/train.py"


rule reuse_model:
    """A variant that differs from an earlier one only in inference settings (the method's
    inference_keys) scores that variant's trained weights; only training-set statistics that
    depend on the inference settings are recomputed (common.smk: training_owner)."""
    input:
        unpack(get_reuse_inputs),
    output:
        model=f"{RUN_DIR}/models/{{group}}.reused.pt",
        run_info=f"{RUN_DIR}/models/{{group}}.reused.run.json",
    params:
        defaults_file=get_defaults_file,
        overrides=get_overrides,
        tracking=tracking_config(),
        tags=get_train_tags,
        weights_dir=config["weights_dir"],
        seed=config["seed"],
        device=config["device"],
    log:
        "results/logs/reuse_model/{dataset}/{method}/{variant}/{group}.log",
    benchmark:
        "results/benchmarks/reuse_model/{dataset}/{method}/{variant}/{group}.tsv"
    conda:
        ENV
    script:
        "../scripts/train.py"
