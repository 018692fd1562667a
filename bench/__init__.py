"""Benchmarks: `python -m bench` runs them all.

Modules:

    __main__          the runner: `python -m bench [--only NAME ...] [--quick] [--json PATH]`
    bench_gpu         `python -m bench gpu`: the training step on one CUDA device
    gpu_setup         its shared setup: scale, images, random-weight teachers, caches
    bench_model       the model's training step: forward + backward images/s
    bench_train       training throughput, cached teacher features against online
    bench_input       the input pipeline: how many cores would feed a GPU
    bench_render      renderer throughput, PNG writing included
    bench_length      `quality:EPS` (one pass) against `search:EPS` (every length)
    bench_grammar     `grammar`: n-gram counting, Re-Pair, a whole `mine`
    bench_decode      the decoding harness against a local server with a fixed delay
    bench_quickstart  a reduced `strop quickstart` at `--jobs 1` against `--jobs N`
    bench_export      `strop export`: images/s, 1 against 2 torchrun processes, peak memory
    bench_mine        `strop-grammar mine` over a 100M-code dataset: peak memory, exact counts
    measure           wall time and peak memory of one command run as a child process
    json_report       `--json PATH`: checked before the first row, written atomically
"""
