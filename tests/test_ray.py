"""The Ray backend on a real local Ray cluster: byte-identical output, resume, bounded retries."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from blurforge.cli import main  # noqa: E402
from blurforge.shards import ShardTask, finish_shard, make_tasks, run_shards  # noqa: E402
from conftest import digest_tree  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import this file
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=200 * 2**20)
    yield
    ray.shutdown()


def test_kernel_bank_is_byte_identical_under_ray(ray_cluster, tmp_path):
    args = ["kernels", "--count", "40", "--seed", "9", "--size", "31", "--length-max", "80", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "local.parquet"), "--workers", "2"]) == 0
    assert main(args + ["--out", str(tmp_path / "ray.parquet"), "--workers", "2", "--backend", "ray"]) == 0
    assert (tmp_path / "local.parquet").read_bytes() == (tmp_path / "ray.parquet").read_bytes()


def test_synthesize_is_byte_identical_under_ray_and_resumes(ray_cluster, photos_dir, small_bank, tmp_path):
    base = ["synthesize", "--sharp", str(photos_dir), "--kernels", str(small_bank), "--seed", "4",
            "--shard-size", "1", "--noise", "rsblur", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "local"), "--workers", "1"]) == 0
    assert main(base + ["--out", str(tmp_path / "ray"), "--workers", "2", "--backend", "ray"]) == 0
    local, remote = digest_tree(tmp_path / "local"), digest_tree(tmp_path / "ray")
    assert local == remote and len(local) > 10
    # resume under Ray: forget two shards, re-run, get the same bytes back
    stats = sorted((tmp_path / "ray" / "stats").glob("*.json"))
    for p in stats[:2]:
        p.unlink()
    (tmp_path / "ray" / "manifest" / stats[0].with_suffix(".parquet").name).unlink()
    assert main(base + ["--out", str(tmp_path / "ray"), "--workers", "2", "--backend", "ray"]) == 0
    assert digest_tree(tmp_path / "ray") == local


def flaky_worker(task: ShardTask) -> dict:
    """Fails the first time it sees each shard whose name ends in an even digit, then succeeds."""
    marker = Path(task.out) / f"{task.shard}.seen"
    if task.shard[-1] in "02468" and not marker.exists():
        marker.write_text("x")
        raise RuntimeError(f"transient failure in {task.shard}")
    if task.config.get("always_fail") == task.shard:
        raise RuntimeError("permanent failure")
    return finish_shard(task, [], [], {})


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_failed_shards_are_retried_then_reported(ray_cluster, tmp_path, backend):
    (tmp_path / "a").mkdir()
    tasks = make_tasks(list(range(6)), 1, tmp_path / "a", {})
    s = run_shards(flaky_worker, tasks, workers=2, progress=False, backend=backend, retries=2)
    assert not s.failed and s.retried == 3
    assert len(list((tmp_path / "a" / "stats").glob("*.json"))) == 6

    (tmp_path / "b").mkdir()
    tasks = make_tasks(list(range(3)), 1, tmp_path / "b", {"always_fail": "shard-00001"})
    s = run_shards(flaky_worker, tasks, workers=2, progress=False, backend=backend, retries=1)
    assert [f["shard"] for f in s.failed] == ["shard-00001"]
    assert "permanent failure" in s.failed[0]["error"]


def test_frames_are_byte_identical_under_ray(ray_cluster, tmp_path):
    from blurforge.demo import write_demo_video

    for i in range(2):
        write_demo_video(tmp_path / "videos" / f"clip{i}.mkv", frames=12, size=(96, 64), speed=2 + i)
    base = ["frames", "--videos", str(tmp_path / "videos"), "--seed", "3", "--window", "5", "--interpolate", "1",
            "--decoder", "av", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "local")]) == 0
    assert main(base + ["--out", str(tmp_path / "ray"), "--workers", "2", "--backend", "ray"]) == 0
    local = digest_tree(tmp_path / "local")
    assert local == digest_tree(tmp_path / "ray") and any(k.startswith("blur/") for k in local)
