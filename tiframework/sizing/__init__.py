"""How much a training step costs before it runs: memory and FLOPs, for choosing sizes.

Used by sweeps (how many population members fit a device) and the benchmarks.

- `memory`: peak memory of the training step, measured on a GPU or estimated without one;
- `fakestep`: the training step on fake tensors (no data, no device): CUDA autocast on a CPU, FLOPs.
"""
