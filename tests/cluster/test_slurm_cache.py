"""``make cache-latents NODES=2`` on the local two-node cluster: one job, one rank per node, each
caching its input shards; the cache folder equals a one-process cache byte for byte."""

from __future__ import annotations

from cluster_helpers import job_ids, make, wait_done

ARGS = "ARGS=--resolution 32 --shard-size 3"


def _folder_bytes(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_cache_latents_over_both_nodes_equals_one_process(
    slurm_env, rendered_shards, tiny_model_dir, tmp_path
):
    data, init = f"DATA={rendered_shards}", f"INIT={tiny_model_dir}"
    one, two = tmp_path / "one", tmp_path / "two"
    local = make("cache-latents", data, init, f"OUT={one}", "LAUNCHER=local", ARGS)
    assert local.returncode == 0, local.stdout + local.stderr
    result = make("cache-latents", "NODES=2", "GPUS=0", data, init, f"OUT={two}", ARGS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 node(s) x 1 rank(s)" in result.stdout
    (job,) = job_ids(result.stdout)
    state = wait_done([job])[job]
    log = next((two / "slurm").glob("cache-latents-*.out")).read_text()
    assert state["JobState"] == "COMPLETED", log
    assert "rank 0 of 2 on n1" in log and "rank 1 of 2 on n2" in log
    expected = _folder_bytes(one)
    assert len([n for n in expected if n.endswith(".tar")]) >= 4
    assert _folder_bytes(two) == expected
