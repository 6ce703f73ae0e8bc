"""Applications built on the qwencoder_jax library: the CPU recipe demo, the showcase, the ablation runner."""
