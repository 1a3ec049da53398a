"""Development and test tools: never shipped in the wheel, never imported by production code.

The analytic diffusion testbed, the tiny pipelines built from configs, Stable Diffusion's
scheduler and architecture configs for benchmarks, the host-sync detector and the README's
settings table generator.
"""
