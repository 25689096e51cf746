"""What a partition offers, read from sinfo's GRES column, and requests it cannot meet explained
before anything is queued: GPUs asked of a partition that has none, more GPUs or nodes than it has.
(The same on the real local cluster: test_slurm_finetune.py.)"""

from __future__ import annotations

import pytest

from cluster import slurm


@pytest.mark.parametrize(
    "gres, gpus",
    [
        ("gpu:8", 8),
        ("gpu:a100:4(S:0-1)", 4),
        ("gpu:a100:2,gpu:v100:2", 4),
        ("gpu:2,shard:8", 2),
        ("(null)", 0),
        ("mps:100", 0),
    ],
)
def test_gpus_per_node_from_the_gres_column(gres, gpus):
    assert slurm._gpus_of(gres) == gpus


def test_requests_a_partition_cannot_meet_say_what_to_change():
    cpu = slurm.Partition(name="cpu", nodes=16, cpus=64, gpus=0, gres="(null)")
    with pytest.raises(slurm.SlurmError, match=r"partition cpu has no GPUs .*PARTITION=.*GPUS=0"):
        slurm.check_request(cpu, gpus=8, nodes=2)
    slurm.check_request(cpu, gpus=0, nodes=16)  # CPU tasks on a CPU partition: fine
    with pytest.raises(slurm.SlurmError, match="partition cpu has 16 nodes; NODES=17"):
        slurm.check_request(cpu, gpus=0, nodes=17)
    gpu = slurm.Partition(name="gpu", nodes=8, cpus=96, gpus=8, gres="gpu:h100:8")
    slurm.check_request(gpu, gpus=8, nodes=8)
    with pytest.raises(slurm.SlurmError, match="has 8 GPUs per node .*GPUS=9 cannot be met"):
        slurm.check_request(gpu, gpus=9, nodes=1)
