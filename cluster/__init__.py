"""SLURM job scripts, requeue and signals, and a real two-node SLURM on one machine for tests."""
