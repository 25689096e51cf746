"""SLURM job scripts, array partitions, and a real two-node SLURM on one machine."""
