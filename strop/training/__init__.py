"""Training STROP (paper Sec. 2.2-2.3): the four-phase length curriculum and the trainer.

    config        `RunConfig` = model + curriculum + train + data, loaded and validated at the edge
    curriculum    the four phases as pure functions of (step, config, statistics)
    trainer       the flat, timed training step and the loop around it
    step          the step's differentiable forward (`TrainForward`), loss terms, clipping
    validation    the validation split's alignment and codebook usage during training
    data          datasets and loaders for training (seeded, resumable position)
    optim         AdamW groups and the warmup-hold-cosine schedule
    log           the step's typed `StepResult`, `metrics.jsonl`, TensorBoard, the progress bar
    checkpoint    atomic checkpoints, RNG state, `load_model`
    resume        which configuration a run may be resumed with
    distributed   DDP via torchrun
    bank          per-image banks averaged over visits (oracle targets, error curves)
    quality       the eps-conditioned length head's training targets from the error curves
    host_sync     copies to the device that never wait (`to_device`)
    mfu           model FLOPs utilisation against the device's peak

Import the module you need (`from strop.training.trainer import train`); this package
imports nothing itself, so `strop.training.config` stays importable without the trainer.
"""
