"""`make gpu-check`: one command that exercises every CUDA path of the workflow on a freshly lent GPU machine.

It runs through Snakemake (`--resources gpu=1`) the cheapest demo runs that together cover every method and every
code-path switch of its experiments, checks that each job ran on the leased GPU, runs the benchmarks, re-runs one
run to compare results for determinism, measures the peak GPU memory of one training iteration of every method at
the paper's input size and batch, and writes one JSON + Markdown summary under results/gpu_check/<device>/.
`--device cpu` runs a small version of the same on CPU: the CI smoke test that keeps it from rotting.
The selection is derived from config/experiments and the demo config, so new methods are picked up unlisted.
"""
