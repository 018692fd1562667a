"""Instruments for tests and benchmarks, kept out of the product's code paths.

- `host_reads`: `count_host_reads`, which counts the reads of tensor values torch code makes
  on the host (the CPU stand-in for CUDA's sync debug mode).
"""
