"""Triton kernels for RocketKV and paged decode; each module: kernels, a launcher, a torch reference."""
