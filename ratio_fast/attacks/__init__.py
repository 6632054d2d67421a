"""Attacks: PGD (the authors' ArgminPGD among its settings) and APGD on the fused ops, the
objectives they maximize, how the in- and out-distribution attacks share the device, and the
CUDA-graph replay of an attack call."""
