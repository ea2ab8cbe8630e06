"""Outputs follow the umask (0644/0755 under 022, 0664/0775 under 002), never mkstemp's 0600 or
mkdtemp's 0700: collaborators and workers running as another user must be able to read them."""

from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

import pytest

from blurforge.cli import main


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def wrong_modes(root: Path, mask: int) -> list[str]:
    """Every file or folder under ``root`` (itself included) whose permission bits are not what a
    plain ``open``/``mkdir`` gives under ``mask``."""
    bad = []
    for p in [root, *root.rglob("*")]:
        want = (0o777 if p.is_dir() else 0o666) & ~mask
        got = stat.S_IMODE(p.lstat().st_mode)
        if got != want:
            bad.append(f"{p.relative_to(root.parent)}: {oct(got)}, expected {oct(want)}")
    return bad


def test_blurforge_outputs_follow_the_umask(umask, photos_dir, tmp_path):
    from blurforge.demo import write_demo_video

    work = tmp_path / "work"  # created by the commands below
    bank = work / "kernels.parquet"
    assert main(["kernels", "--count", "4", "--size", "15", "--length-max", "20", "--out", str(bank),
                 "--preview", str(work / "kernels.png"), "--quiet"]) == 0
    assert main(["synthesize", "--sharp", str(photos_dir), "--kernels", str(bank), "--out", str(work / "pairs"),
                 "--seed", "1", "--shard-size", "2", "--workers", "2", "--quiet"]) == 0
    write_demo_video(tmp_path / "videos" / "pan.mkv", frames=8, size=(48, 32), speed=2)
    assert main(["frames", "--videos", str(tmp_path / "videos"), "--out", str(work / "frames"), "--window", "3",
                 "--decoder", "av", "--quiet"]) == 0
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("not an image")
    assert main(["build-manifest", str(work / "pairs"), str(work / "frames"), "--out",
                 str(work / "m" / "manifest.parquet"), "--val-fraction", "0.5", "--quiet"]) == 0
    assert main(["inspect", str(work / "m" / "manifest.parquet"), "--preview", str(work / "m" / "pairs.png")]) == 0
    assert (work / "pairs" / "manifest").is_dir() and (work / "m" / "pairs.png").is_file()
    bad = wrong_modes(work, umask)
    assert bad == [], "\n".join(bad)


def test_deblurdiff_outputs_follow_the_umask(umask, pairs_dir, tmp_path):
    torch = pytest.importorskip("torch")
    from accelerate.state import AcceleratorState, GradientState

    from deblurdiff.infer import add_infer_arguments, run_infer
    from deblurdiff.msgd import build_msgd
    from deblurdiff.presets import build_model
    from deblurdiff.train import add_train_arguments, train

    work = tmp_path / "work"
    build_model("tiny", seed=0).save_pretrained(work / "saved")
    build_msgd("msgd-tiny", seed=0).save_pretrained(work / "saved-msgd")
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(p.parse_args(["--manifest", str(pairs_dir), "--output-dir", str(work / "run"), "--preset", "tiny",
                            "--resolution", "32", "--batch-size", "2", "--max-steps", "1", "--checkpoint-every", "1",
                            "--val-every", "0", "--num-workers", "0", "--quiet"]))
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state()
        GradientState._reset_state()
    assert (work / "run" / "checkpoint-1" / "model" / "deblurdiff.json").is_file()
    q = argparse.ArgumentParser()
    add_infer_arguments(q)
    blurry = sorted((pairs_dir / "blur").rglob("*.png"))[0]
    run_infer(q.parse_args(["--checkpoint", str(work / "saved"), "--input", str(blurry), "--output",
                            str(work / "deblurred"), "--steps", "2", "--quiet"]))
    assert any((work / "deblurred").iterdir())
    bad = wrong_modes(work, umask)
    assert bad == [], "\n".join(bad)
