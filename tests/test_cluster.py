"""Reading real clusters' sinfo output: GRES strings as Slurm prints them on GPU clusters."""

from __future__ import annotations

import pytest

from hpcnli.cluster.commands import gpu_count


@pytest.mark.parametrize(
    "gres,gpus",
    [
        ("(null)", 0),
        ("", 0),
        ("gpu:4", 4),
        ("gpu:h100:4", 4),
        ("gpu:h100:4(S:0-1)", 4),  # socket affinity
        ("gpu:a100:8(S:0,1)", 8),  # a comma inside the affinity
        ("gpu:a100:8(S:0-1),nvme:1", 8),
        ("gpu:a100:4,gpu:v100:2", 6),  # several GPU types on one node
        ("gpu:a100:4(S:0),gpu:v100:2(S:1)", 6),
        ("gpu:1g.10gb:7", 7),  # MIG profile: seven instances, seven GPUs to Slurm
        ("gpu:3g.40gb:2,gpu:4g.40gb:1", 3),
        ("mps:400,gpu:2", 2),  # other GRES first
        ("shard:16,gpu:tesla:2(S:0)", 2),
        ("nvme:1", 0),
        ("gpu", 1),
    ],
)
def test_gpu_count_of_real_gres_strings(gres, gpus):
    assert gpu_count(gres) == gpus
