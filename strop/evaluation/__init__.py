"""What trained programs show (paper Sec. 3-4): export, metrics, analysis, the report.

    export          programs of a trained run -> `programs.parquet` (head, fixed or search lengths)
    run_inputs      what every command over a run reads: its model on a device, its dataset, loaders
    batch_encoding  one batch through teacher and generator -> codes and lengths under a length mode
    programs_dataset  a split's programs as parquet shards plus `manifest.json`
    distributed     which share of an export this process writes (`torchrun` or alone)
    sharded_pass    the planned, resumable, rank-split pass `export` and `cache-features` share
    feature_shards  `strop cache-features`: the teacher's features as shards plus `index.json`
    evaluate        `eval.json`: alignment, codebook usage, pixel SSIM/LPIPS, length vs object count
    scene_probes    linear probes of the scene from the codes, beside their baselines
    order_probe     does token order matter? (`eval.json`'s `order_probe`)
    quality_calibration  does the quality head deliver the EPS `quality:EPS` asks for? (eval.json's
                    `quality_control` block)
    sweep           length-quality curves: `strop eval RUN --sweep` -> `sweep.json`
    lpips           LPIPS v0.1 (AlexNet) without torchvision, from local weight files
    analyze         counterfactual erasure, attribution vs object masks, pair synergy, contingency
    erasure         erasure maps and pair synergy on one program
    object_masks    CLEVR object masks from scenes (which patches belong to which object)
    object_metrics  FG-ARI and mBO of token attribution against object masks
    plots           the figures shared by `analyze` and `report`
    length_plots    length-quality curves and the calibration of `quality:EPS`
    readme_figures  the README's quickstart figures, from a quickstart folder
    real_pair       a real CLEVR image beside our render of the same scene
    report/         `report.md` and `report.html` over every sub-run of an experiment

Import the module you need; this package imports nothing itself.
"""
