"""RESCue-eval benchmarks: `python -m benchmarks` runs them all and prints one table.

Items 1-3 drive the real harness with SYNTHETIC model backends (benchmarks/synthetic.py),
because the GPU models cannot run here; item 6 runs the real model classes with tiny weights.
"""
