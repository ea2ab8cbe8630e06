"""deblurdiff train on the tiny preset: learning, exact resume (also after SIGKILL), checkpoints,
final/ loading, non-finite skips, small-pair counting, validation images, clear input errors."""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deblurdiff.model import DeblurDiff
from deblurdiff.train import add_train_arguments, main_for_tests, train

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("torch_one_thread", "fresh_accelerate_state")
BASE = ["--preset", "tiny", "--resolution", "32", "--batch-size", "2", "--log-every", "1", "--val-every", "0",
        "--num-workers", "0", "--quiet"]


def parse(*argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_train_arguments(p)
    argv = [str(a) for a in argv]
    if "--preset" not in argv:  # required on the command line; these tests are about DeblurDiff at SD size
        argv += ["--preset", "sd21-base"]
    return p.parse_args(argv)


def run(manifest, out, *extra):
    return train(parse("--manifest", manifest, "--output-dir", out, *BASE, *extra))


def records(out, kind="train") -> list[dict]:
    lines = (Path(out) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["type"] == kind]


# a warm-up keeps the LR changing across the resume point, so a scheduler that is not restored shows
RESUME_FLAGS = ("--checkpoint-every", 2, "--keep-checkpoints", 2, "--lr", 1e-3, "--lr-warmup", 5, "--num-workers", 1)


@pytest.fixture(scope="module")
def straight(pairs_dir, tmp_path_factory):
    """An uninterrupted 6-step run: the reference for resuming."""
    out = tmp_path_factory.mktemp("straight") / "run"
    result = run(pairs_dir, out, "--max-steps", 6, *RESUME_FLAGS)
    yield out, result
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


def test_loss_falls_when_overfitting_and_validation_writes_images(pairs_dir, tmp_path):
    out = tmp_path / "run"
    result = run(pairs_dir, out, "--max-steps", 30, "--lr", 3e-3, "--checkpoint-every", 0,
                 "--val-every", 30, "--val-count", 2, "--val-steps", 2)
    losses = [r["loss"] for r in records(out)]
    assert len(losses) == 30 and result.state.step == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    (val,) = records(out, "val")
    assert val["step"] == 30 and math.isfinite(val["psnr"]) and 0 < val["ssim_blurry"] <= 1
    pngs = sorted((out / "val" / "step-30").glob("*.png"))
    assert len(pngs) == 2
    import cv2

    sheet = cv2.imread(str(pngs[0]))
    assert sheet.shape[1:] == (96, 3) and sheet.shape[0] > 32  # blurry | output | sharp, a caption strip below


def test_resume_continues_the_same_loss_curve(straight, pairs_dir, tmp_path):
    ref_out, _ = straight
    out = tmp_path / "run"
    first = run(pairs_dir, out, "--max-steps", 3, *RESUME_FLAGS)
    assert first.checkpoint == out / "checkpoint-3"
    second = run(pairs_dir, out, "--max-steps", 6, "--resume", "latest", *RESUME_FLAGS)
    assert second.start_step == 3
    ref = [r["loss"] for r in records(ref_out)]
    got = [r["loss"] for r in records(out)]
    assert [r["step"] for r in records(out)] == list(range(1, 7))
    assert got == pytest.approx(ref, rel=1e-6, abs=1e-7)
    lrs = [r["lr"] for r in records(out)]
    assert lrs == [r["lr"] for r in records(ref_out)] == pytest.approx([1e-3 * min(1, (s + 1) / 6) for s in range(1, 7)])
    s_ref = json.loads((ref_out / "checkpoint-6" / "state.json").read_text())
    s_got = json.loads((out / "checkpoint-6" / "state.json").read_text())
    assert s_ref["data_position"] == s_got["data_position"] == {"next_sample": 12}


def test_checkpoints_are_complete_and_pruned(straight, pairs_dir):
    out, result = straight
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-4", "checkpoint-6", "final", "metrics.jsonl"]
    ckpt = out / "checkpoint-6"
    for name in ("model/deblurdiff.json", "model/controlnet", "model/lkpn", "optimizer.pt", "scheduler.pt",
                 "rng-0.pt", "state.json"):
        assert (ckpt / name).exists(), name
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 6 and state["args"]["max_steps"] == 6
    # a directory that already holds checkpoints is not silently overwritten
    assert main_for_tests(["--manifest", str(pairs_dir), "--output-dir", str(out), *BASE, "--max-steps", "1"]) == 2


def test_final_loads_with_from_pretrained_and_predicts_the_same(straight):
    out, result = straight
    loaded = DeblurDiff.from_pretrained(out / "final")
    g = torch.Generator().manual_seed(0)
    z_t, z_lq = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    with torch.no_grad():
        want, _ = result.model.predict_eps(z_t, 500, z_lq)
        got, _ = loaded.predict_eps(z_t, 500, z_lq)
    assert torch.allclose(got, want, atol=1e-6)
    from deblurdiff.presets import build_model

    with torch.no_grad():
        untrained, _ = build_model("tiny").predict_eps(z_t, 500, z_lq)
    assert not torch.allclose(got, untrained, atol=1e-6)  # the saved weights are the trained ones


KILL_SCRIPT = """
import sys, time
import torch
torch.set_num_threads(1)  # as the in-process runs it is compared with
from deblurdiff.model import DeblurDiff
real = DeblurDiff.training_losses
def slow(self, *a, **k):
    time.sleep(0.5)
    return real(self, *a, **k)
DeblurDiff.training_losses = slow
from deblurdiff.train import main_for_tests
sys.exit(main_for_tests(sys.argv[1:]))
"""


def test_sigkill_then_resume_matches_uninterrupted(straight, pairs_dir, tmp_path):
    ref_out, _ = straight
    out = tmp_path / "run"
    argv = ["--manifest", str(pairs_dir), "--output-dir", str(out), *BASE, "--max-steps", "6",
            *map(str, RESUME_FLAGS)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (out / "checkpoint-2").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "the run finished before it could be killed"
    assert (out / "checkpoint-2" / "state.json").is_file()
    run(pairs_dir, out, "--max-steps", 6, "--resume", "latest", *RESUME_FLAGS)
    ref = [r["loss"] for r in records(ref_out)]
    got = [r["loss"] for r in records(out)]
    assert got == pytest.approx(ref, rel=1e-6, abs=1e-7)
    assert not list(out.glob(".*")), "temporary checkpoint folders left behind"


DDP_SCRIPT = """
import sys
import torch
from deblurdiff.train import add_train_arguments, train
import argparse
p = argparse.ArgumentParser()
add_train_arguments(p)
result = train(p.parse_args(sys.argv[1:]))
rank = torch.distributed.get_rank()
torch.save([q.detach().clone() for q in result.model.trainable_parameters()],
           result.output_dir / f"params-rank{rank}.pt")
"""


def test_two_processes_average_gradients_shard_the_stream_and_save_per_rank_rng(pairs_dir, tmp_path):
    """torchrun with 2 CPU processes (gloo): DDP through accelerate, one metrics writer. The ranks see
    different pairs and noise, so their parameters agree after the steps only if gradients are averaged."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "--manifest", str(pairs_dir), "--output-dir", str(out), *BASE, "--batch-size", "4", "--max-steps", "2",
           "--num-workers", "0", "--lr", "1e-3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads((out / "checkpoint-2" / "state.json").read_text())
    assert state["world_size"] == 2 and state["data_position"] == {"next_sample": 8}  # 2 steps x global batch 4
    assert (out / "checkpoint-2" / "rng-0.pt").is_file() and (out / "checkpoint-2" / "rng-1.pt").is_file()
    assert [r["step"] for r in records(out)] == [1, 2]
    assert proc.stdout.count("train: 2 steps") == 1  # one summary line, from the main process
    assert "global batch 4 = 2 process(es) x 2 pairs x 1 accumulation step(s)" in proc.stderr
    p0, p1 = (torch.load(out / f"params-rank{r}.pt") for r in (0, 1))
    from deblurdiff.presets import build_model

    start = build_model("tiny").trainable_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(p0, start))  # the steps changed the weights
    for a, b in zip(p0, p1):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def test_nonfinite_loss_skips_the_step_and_is_counted(pairs_dir, tmp_path, monkeypatch):
    real = DeblurDiff.training_losses
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        losses = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(DeblurDiff, "training_losses", poisoned)
    out = tmp_path / "run"
    result = run(pairs_dir, out, "--max-steps", 3, "--checkpoint-every", 1, "--keep-checkpoints", 0, "--lr", 1e-3)
    recs = records(out)
    assert [r["skipped_nonfinite"] for r in recs] == [0, 0, 1]
    assert recs[2]["loss"] is None and recs[1]["loss"] is not None
    assert result.state.skipped_nonfinite == 1
    assert all(torch.isfinite(p).all() for p in result.model.trainable_parameters())
    # the skipped step changed nothing: checkpoint-3 holds checkpoint-2's weights and optimizer
    a = DeblurDiff.from_pretrained(out / "checkpoint-2" / "model")
    b = DeblurDiff.from_pretrained(out / "checkpoint-3" / "model")
    for p, q in zip(a.trainable_parameters(), b.trainable_parameters()):
        assert torch.equal(p, q)
    oa = torch.load(out / "checkpoint-2" / "optimizer.pt", weights_only=False)
    ob = torch.load(out / "checkpoint-3" / "optimizer.pt", weights_only=False)
    assert all(torch.equal(oa["state"][k]["exp_avg"], ob["state"][k]["exp_avg"]) for k in oa["state"])


def test_small_pairs_are_padded_and_counted(pairs_dir, tmp_path, capsys):
    out = tmp_path / "run"
    result = run(pairs_dir, out, "--max-steps", 2, "--resolution", 80, "--batch-size", 1, "--checkpoint-every", 0)
    assert result.state.padded_samples == 2
    assert records(out)[-1]["padded_samples"] == 2
    summary = capsys.readouterr().out
    assert "8 pair(s) smaller than 80px padded (2 padded samples seen)" in summary
    assert f"-> {out / 'final'}" in summary


def test_bf16_keeps_latents_noise_and_master_weights_fp32(pairs_dir, tmp_path, monkeypatch):
    """bf16: the UNet is bf16, the VAE stays fp32 as its config asks (force_upcast), and what the
    networks are given — z_t, z_lq — is fp32 and exactly the fp32 forward process."""
    seen = []
    real = DeblurDiff.predict_eps

    def spy(self, z_t, t, z_lq):
        seen.append((z_t.dtype, z_lq.dtype))
        return real(self, z_t, t, z_lq)

    monkeypatch.setattr(DeblurDiff, "predict_eps", spy)
    result = run(pairs_dir, tmp_path / "run", "--max-steps", 2, "--mixed-precision", "bf16",
                 "--gradient-checkpointing", "--checkpoint-every", 0)
    m = result.model
    assert m.vae.config.force_upcast
    assert next(m.unet.parameters()).dtype == torch.bfloat16 and next(m.vae.parameters()).dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in m.trainable_parameters())
    assert seen and all(d == (torch.float32, torch.float32) for d in seen)
    assert all(r["loss"] is not None and math.isfinite(r["loss"]) for r in records(tmp_path / "run"))


def test_bf16_training_targets_are_the_fp32_forward_process():
    """Under bf16 autocast with a bf16 UNet, z_t = sqrt(abar) z0 + sqrt(1 - abar) noise in fp32."""
    from deblurdiff.presets import build_model
    from deblurdiff.train import cast_frozen

    model = build_model("tiny")
    cast_frozen(model, torch.bfloat16)
    captured = {}

    def capture(z_t, t, z_lq):
        captured.update(z_t=z_t, t=t, z_lq=z_lq)
        raise StopIteration

    model.predict_eps = capture
    g = torch.Generator().manual_seed(0)
    blurry, sharp = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(StopIteration):
        model.training_losses(blurry, sharp, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        z0 = model.encode(sharp)
    gen = torch.Generator().manual_seed(4)
    t = torch.randint(0, 1000, (2,), generator=gen)
    noise = torch.randn(z0.shape, generator=gen)
    abar = model.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert captured["z_t"].dtype == torch.float32 and torch.equal(captured["t"], t)
    torch.testing.assert_close(captured["z_t"], abar.sqrt() * z0 + (1 - abar).sqrt() * noise, rtol=0, atol=1e-6)


def test_recipes_set_defaults_and_explicit_options_win(pairs_dir, tmp_path, capsys):
    from deblurdiff.train import RECIPES, apply_recipe, default_num_workers, split_batch

    args = apply_recipe(parse("--manifest", pairs_dir, "--output-dir", tmp_path, "--recipe", "released", "--lr", 3e-4))
    assert args.lr == 3e-4 and args.weight_decay == 0.01 and args.max_grad_norm == 0 and args.batch_size == 64
    assert args.controlnet_input == "concat" and args.gradient_checkpointing
    paper = apply_recipe(parse("--manifest", pairs_dir, "--output-dir", tmp_path))
    assert (paper.lr, paper.batch_size, paper.max_steps) == (5e-5, 128, 100_000) == tuple(
        RECIPES["paper"][k] for k in ("lr", "batch_size", "max_steps"))
    assert split_batch(128, 8, None) == (16, 1) and split_batch(128, 1, 16) == (16, 8) and split_batch(64, 8, 8) == (8, 1)
    with pytest.raises(ValueError, match="not a multiple"):
        split_batch(64, 3, 8)
    assert 1 <= default_num_workers(1) <= 8 and default_num_workers(10_000) == 1

    out = tmp_path / "run"
    run(pairs_dir, out, "--recipe", "released", "--max-steps", 1, "--checkpoint-every", 0, "--batch-size", 2,
        "--micro-batch-size", 1, "--no-gradient-checkpointing")
    err = capsys.readouterr().err
    assert "recipe released: global batch 2 = 1 process(es) x 1 pairs x 2 accumulation step(s)" in err
    assert "adamw lr 0.0001 weight decay 0.01, no clipping" in err
    config = json.loads((out / "final" / "deblurdiff.json").read_text())["config"]
    assert (config["controlnet_input"], config["blurry_range"], config["posterior"], config["timestep_spacing"]) == (
        "concat", "unit", "sample", "linspace")
    assert config["lkpn"]["zero_init"] == "residual-branches"
    loaded = DeblurDiff.from_pretrained(out / "final")
    assert loaded.config.controlnet_input == "concat"
    opt = torch.load(out / "checkpoint-1" / "optimizer.pt", weights_only=False)
    assert opt["param_groups"][0]["weight_decay"] == 0.01
    assert {float(st["step"]) for st in opt["state"].values()} == {1.0}  # 2 micro-batches, one optimizer step


@pytest.mark.parametrize(
    "case, message",
    [("missing", "no such manifest"), ("schema", "schema_version"), ("images", "image files checked"),
     ("weights", "one weight per manifest")],
)
def test_bad_inputs_give_clear_errors(case, message, pairs_dir, tmp_path, capsys):
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest, extra = tmp_path / "nope", []
    if case == "schema":
        manifest = tmp_path / "plain.parquet"
        pq.write_table(pa.table({"key": ["a"]}), manifest)
    elif case == "images":
        manifest = tmp_path / "pairs"
        shutil.copytree(pairs_dir, manifest)
        shutil.rmtree(manifest / "blur")
    elif case == "weights":
        manifest, extra = pairs_dir, ["--manifest-weight", "1", "--manifest-weight", "2"]
    code = main_for_tests(["--manifest", str(manifest), "--output-dir", str(tmp_path / "out"), *BASE, *extra])
    assert code == 2
    assert message in capsys.readouterr().err


def test_resume_path_must_be_a_complete_checkpoint(pairs_dir, tmp_path, capsys):
    code = main_for_tests(["--manifest", str(pairs_dir), "--output-dir", str(tmp_path / "out"), *BASE,
                           "--resume", str(tmp_path / "nowhere")])
    assert code == 2 and "not a complete checkpoint" in capsys.readouterr().err


def test_tf32_switch_sets_matmul_and_cudnn_precision():
    """What train applies on CUDA (the CUDA path itself is not exercised on a CPU machine)."""
    from deblurdiff.train import set_tf32

    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        set_tf32(True)
        assert torch.get_float32_matmul_precision() == "high" and torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert torch.get_float32_matmul_precision() == "highest" and not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cudnn.allow_tf32 = before[1]
    assert parse("--manifest", "m", "--output-dir", "o").tf32 and not parse("--manifest", "m", "--output-dir", "o",
                                                                           "--no-tf32").tf32
