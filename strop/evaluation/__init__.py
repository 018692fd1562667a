"""What trained programs show (paper Sec. 3-4): export, metrics, analysis, the report.

    export          programs of a trained run -> `programs.parquet` (head, fixed or search lengths)
    evaluate        `eval.json`: alignment, codebook usage, pixel SSIM/LPIPS, length vs object count
    lpips           LPIPS v0.1 (AlexNet) without torchvision, from local weight files
    analyze         counterfactual erasure, attribution vs object masks, pair synergy, contingency
    erasure         erasure maps and pair synergy on one program
    object_masks    CLEVR object masks from scenes (which patches belong to which object)
    plots           the figures shared by `analyze` and `report`
    report/         `report.md` and `report.html` over every sub-run of an experiment

Import the module you need; this package imports nothing itself.
"""
