"""The output layer: what a job leaves on disk and on dashboards.

Per-rank JSONL results appended and made durable per sample (and read back to resume), the
summary, the Markdown report with its plots and overlays, Weights & Biases tracking and the
progress bar. Imports the core layer only.
"""
