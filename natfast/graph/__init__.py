"""The graph engine: a supernet step whose launch sequence does not depend on the sampled
architecture, so one CUDA graph serves every genotype (issue 23). See natfast/graph/engine.py."""
