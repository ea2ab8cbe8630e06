"""The deblurdiff command line as a newcomer meets it: --help texts and examples, an instant
--help, the exit-status rule, where infer writes (and never overwrites), the messages and
summaries of train, and the direction of the modules' imports."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import option_helps, package_imports, photo, write_png
from deblurdiff import cli
from deblurdiff.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("torch_one_thread", "fresh_accelerate_state")
TINY = ["--preset", "tiny", "--resolution", "32", "--batch-size", "2", "--log-every", "1", "--num-workers", "0",
        "--checkpoint-every", "0", "--quiet"]
FAST = ["--sampler", "ddim", "--steps", "1", "--device", "cpu"]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    return dict(build_parser()._subparsers._group_actions[0].choices)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from deblurdiff.presets import build_model

    return build_model("tiny", seed=0).save_pretrained(tmp_path_factory.mktemp("ckpt") / "final")


def infer(ckpt, *argv) -> int:
    return main(["infer", "--checkpoint", str(ckpt), *map(str, argv), *FAST, "--quiet"])


# ------------------------------------------------------------------------------------ --help


def test_help_shows_each_default_once_and_only_when_it_means_something():
    for name, sp in subcommands().items():
        text = sp.format_help()
        for bad in ("(default: None)", "(default: )", "(default: [])", "(default: False)", "(default: True)",
                    "(default: ())"):
            assert bad not in text, f"deblurdiff {name} --help: {bad}"
        for option, help_ in option_helps(sp).items():
            assert help_.count("default") <= 1, f"deblurdiff {name} {option}: {help_}"
            assert help_.count("default") == help_.count("(default: "), f"deblurdiff {name} {option}: {help_}"
        required = [a for a in sp._actions if a.required and a.option_strings]
        assert all("default" not in (a.help or "") for a in required), name
    # a default that is 0 is still shown (0 == False must not hide it)
    assert "(default: 0)" in option_helps(subcommands()["infer"])["--seed"]


def test_descriptions_do_not_repeat_themselves():
    for name, sp in subcommands().items():
        sentences = [s.strip().lower() for s in re.split(r"(?<=\.)\s+", sp.description or "") if s.strip()]
        assert sentences, name
        assert len(sentences) == len(set(sentences)), f"deblurdiff {name}: {sp.description}"
        words = (sp.description or "").lower().split()
        first = " ".join(words[:6])
        assert " ".join(words).count(first) == 1, f"deblurdiff {name} repeats its opening: {sp.description}"


def example_lines(epilog: str, command: str) -> list[str]:
    """The epilog's 'deblurdiff COMMAND ...' lines, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", epilog or "")
    return [line.split("#")[0].strip() for line in joined.splitlines() if line.strip().startswith(f"deblurdiff {command}")]


def test_every_command_has_runnable_examples():
    parser = build_parser()
    for name, sp in subcommands().items():
        examples = example_lines(sp.epilog, name)
        assert 1 <= len(examples) <= 3, (name, examples)
        for line in examples:
            args = parser.parse_args(shlex.split(line)[1:])  # exits (a failure) on an unknown or missing option
            assert args.command == name
    top = example_lines(parser.epilog, "")
    assert top and all(parser.parse_args(shlex.split(line)[1:]) for line in top)


def test_preset_option_is_the_same_in_describe_and_train():
    from deblurdiff.choices import PRESETS

    actions = {name: next(a for a in subcommands()[name]._actions if "--preset" in a.option_strings)
               for name in ("describe", "train")}
    for action in actions.values():
        assert tuple(action.choices) == PRESETS and action.required and action.default is None
    assert actions["describe"].help == actions["train"].help


def test_option_names_equal_the_librarys_own():
    """deblurdiff.choices writes the names out so --help needs no torch; they must stay the library's."""
    from deblurdiff import choices, frozen, lkpn, metrics, model, msgd, sampling

    assert choices.DEBLURDIFF_PRESETS == frozen.PRESETS
    assert choices.MSGD_PRESETS == tuple(msgd.PRESETS)
    assert choices.ZERO_INITS == lkpn.ZERO_INITS
    assert choices.SAMPLERS == tuple(sampling.SAMPLERS) and choices.DEFAULT_STEPS == sampling.DEFAULT_STEPS
    assert choices.TIMESTEP_SPACINGS == sampling.SPACINGS == model.TIMESTEP_SPACINGS
    assert (choices.GUIDANCE_MODES, choices.TARGETS, choices.PREDICTIONS) == (msgd.GUIDANCE_MODES, msgd.TARGETS,
                                                                             msgd.PREDICTIONS)
    assert choices.OPTIONAL_METRICS == metrics.OPTIONAL_METRICS
    assert all(choices.is_msgd_preset(p) == msgd.is_msgd_preset(p) for p in (*choices.PRESETS, "sd3", None))


HEAVY = ("torch", "diffusers", "transformers", "accelerate", "numpy", "cv2", "pyarrow")


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["infer", "--help"], ["evaluate", "--help"],
                                  ["convert", "--help"], ["describe", "--help"], ["demo", "--help"],
                                  ["train", "--manifest", "m.parquet"], ["infer", "--sampler", "nope"]])
def test_help_and_argument_errors_import_nothing_heavy(argv):
    code = ("import sys\nfrom deblurdiff.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    code = e.code\nprint(code, sorted(m for m in %r if m in sys.modules))" % (HEAVY,))
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=ROOT,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    status, heavy = proc.stdout.strip().splitlines()[-1].split(" ", 1)
    assert heavy == "[]", proc.stdout + proc.stderr
    assert status == ("0" if "--help" in argv else "2"), proc.stdout + proc.stderr


# ------------------------------------------------------------------------------- module structure




COMMANDS = {"train", "infer", "evaluate", "convert", "msgd_train", "msgd_infer"}


def test_the_modules_depend_one_way():
    """presets -> model -> frozen, never back; the library never imports the command layer (cli and
    the command modules) above it. (cli <-> demo belongs to the demo's own tests.)"""
    graph = {p.stem: package_imports(p, "deblurdiff") for p in (ROOT / "deblurdiff").glob("*.py")}
    assert "model" in graph["presets"] and "frozen" in graph["model"] and "frozen" in graph["presets"]
    assert "presets" not in graph["model"] and not {"presets", "model"} & graph["frozen"]
    assert graph["choices"] == set()  # the names --help needs, importing nothing
    layers = {"__main__": 0, "cli": 1, "demo": 2, **{c: 3 for c in COMMANDS}, "presets": 4, "model": 5}
    for module, deps in graph.items():
        if module == "demo":
            continue
        level = layers.get(module, 6)  # 6: the library below the model
        for dep in deps - {"demo", "__version__"}:
            dep_level = layers.get(dep, 6)
            assert dep_level > level or (level == dep_level and level in (3, 6)), \
                f"deblurdiff.{module} imports deblurdiff.{dep}"


# ---------------------------------------------------------------------------------- exit status


def test_the_exit_rule_is_in_the_help_and_the_readme():
    top = build_parser().format_help()
    assert cli.EXIT_RULE in top
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## deblurdiff CLI"):]
    section = section[:section.index("\n## ", 5)]
    assert "Partial success is success" in section
    for status in ("0", "1", "2", "130"):
        assert re.search(rf"\| {status} \|", section), status


def test_infer_partial_success_exits_0_nothing_1_bad_input_2(ckpt, tmp_path, capsys):
    src = tmp_path / "blurry"
    write_png(src / "a.png", photo("coffee", (24, 16)))
    (src / "broken.png").write_text("not an image")
    assert infer(ckpt, "--input", src, "--output", tmp_path / "out") == 0
    out, err = capsys.readouterr()
    assert "infer: 1 of 2 image(s) deblurred, 1 failed" in out
    assert f"infer: 1 input(s) could not be read:\n  {src / 'broken.png'}: " in err
    record = json.loads((tmp_path / "out" / "infer.json").read_text())
    assert record["images"] == 1 and record["failures"][0]["input"] == str(src / "broken.png")
    # nothing usable: 1
    (src / "a.png").unlink()
    assert infer(ckpt, "--input", src, "--output", tmp_path / "out2") == 1
    assert "no image was deblurred" in capsys.readouterr().err
    # found before any work: 2, the input named, nothing written
    assert infer(ckpt, "--input", tmp_path / "missing", "--output", tmp_path / "o3") == 2
    assert f"--input {tmp_path / 'missing'}: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()


def test_a_wrong_checkpoint_says_what_it_is(ckpt, tmp_path, capsys):
    write_png(tmp_path / "a.png", photo("coffee", (24, 16)))
    argv = ["--input", tmp_path / "a.png", "--output", tmp_path / "o"]
    assert infer(tmp_path / "run" / "nope", *argv) == 2
    err = capsys.readouterr().err
    assert f"--checkpoint {tmp_path / 'run' / 'nope'}: no such file or folder" in err and "missing" not in err
    run = ckpt.parent
    assert infer(run, *argv) == 2  # the run's folder, not its final/
    assert f"pass {run / 'final'}" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert infer(tmp_path / "empty", *argv) == 2
    assert "no deblurdiff.json or msgd.json in this folder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    # a training checkpoint folder works: its model/ holds the weights
    import shutil

    shutil.copytree(ckpt, tmp_path / "checkpoint-7" / "model")
    assert infer(tmp_path / "checkpoint-7", *argv) == 0


def test_evaluate_with_no_prediction_at_all_exits_1(pairs_dir, tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    assert main(["evaluate", "--manifest", str(pairs_dir), "--split", "train", "--predictions",
                 str(tmp_path / "pred"), "--out", str(tmp_path / "r.csv"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "8 pair(s) not scored" in err and "... and 3 more" in err and "no pair could be scored" in err


@pytest.mark.parametrize("command, argv, resume", [
    ("infer", ["infer", "--checkpoint", "run/final", "--input", "my photos", "--output", "out"],
     "deblurdiff infer --checkpoint run/final --input 'my photos' --output out"),
    ("train", ["train", "--manifest", "m.parquet", "--preset", "tiny", "--output-dir", "run"],
     "deblurdiff train --manifest m.parquet --preset tiny --output-dir run --resume latest"),
])
def test_interrupt_exits_130_with_the_command_that_resumes(command, argv, resume, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, f"cmd_{command}", interrupted)
    assert main(argv) == 130
    assert f"interrupted — {cli.RESUME[command]}:\n  {resume}\n" in capsys.readouterr().err


# ------------------------------------------------------------------------------ infer: outputs


def test_single_file_into_the_current_folder_and_to_a_named_file(ckpt, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_png(tmp_path / "photo.png", photo("astronaut", (30, 22)))
    before = (tmp_path / "photo.png").read_bytes()
    # a folder beside the photo (inside the photo's folder, which is the current one)
    assert infer(ckpt, "--input", "photo.png", "--output", "out") == 0
    assert cv2.imread("out/photo.png").shape == (22, 30, 3) and (tmp_path / "out" / "infer.json").is_file()
    assert "-> out/photo.png" in capsys.readouterr().out
    # a file name: that file is written (not a folder of that name), its record beside it
    assert infer(ckpt, "--input", "photo.png", "--output", "result.png") == 0
    assert (tmp_path / "result.png").is_file() and cv2.imread("result.png").shape == (22, 30, 3)
    assert json.loads((tmp_path / "result.infer.json").read_text())["outputs"] == {"photo.png": "result.png"}
    assert "-> result.png" in capsys.readouterr().out
    # the current folder itself: refused only because it would replace the photo
    assert infer(ckpt, "--input", "photo.png", "--output", ".") == 2
    assert "would overwrite the input photo.png" in capsys.readouterr().err
    write_png(tmp_path / "other.jpg", photo("coffee", (24, 16)))
    assert infer(ckpt, "--input", "other.jpg", "--output", ".") == 0 and (tmp_path / "other.png").is_file()
    # file names that cannot be honoured
    assert infer(ckpt, "--input", "photo.png", "--output", "result.jpg") == 2
    assert "outputs are PNG files" in capsys.readouterr().err
    assert infer(ckpt, "--input", "out", "--output", "all.png") == 2  # a folder of images into one file
    assert "pass a folder" in capsys.readouterr().err
    assert (tmp_path / "photo.png").read_bytes() == before


def test_inputs_sharing_a_stem_get_distinct_names_decided_up_front(ckpt, tmp_path, capsys):
    src = tmp_path / "blurry"
    write_png(src / "x.png", photo("astronaut", (24, 16)))
    cv2.imwrite(str(src / "x.jpg"), cv2.cvtColor(photo("coffee", (24, 16)), cv2.COLOR_RGB2BGR))
    write_png(src / "sub" / "y.png", photo("chelsea", (24, 16)))
    assert infer(ckpt, "--input", src, "--output", tmp_path / "out") == 0
    out, err = capsys.readouterr()
    assert "x.jpg -> x.jpg.png" in err and "x.png -> x.png.png" in err
    assert "3 of 3 image(s) deblurred" in out
    names = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert names == ["sub/y.png", "x.jpg.png", "x.png.png"]


def test_output_names():
    from deblurdiff.infer import output_names

    assert output_names(["a/x.jpg", "b.png"]) == (["a/x.png", "b.png"], [])
    names, renamed = output_names(["x.jpg", "x.png", "X.TIF", "y.tif"])  # x.png and X.png clash, ignoring case
    assert names == ["x.jpg.png", "x.png.png", "X.TIF.png", "y.png"] and len(renamed) == 3
    names, _ = output_names(["x.jpg", "x.png", "X.PNG"])  # x.png.png and X.PNG.png clash again
    assert names[0] == "x.jpg.png" and len({n.casefold() for n in names}) == 3
    names, _ = output_names(["x.jpg", "x.png", "x.jpg.png"])  # a clash left after keeping extensions
    assert len({n.casefold() for n in names}) == 3 and all(n.endswith(".png") for n in names)


def test_16_bit_inputs_give_16_bit_outputs(ckpt, tmp_path):
    src = tmp_path / "blurry"
    src.mkdir()
    img16 = (photo("astronaut", (24, 16)).astype(np.uint16) * 257)
    cv2.imwrite(str(src / "deep.png"), cv2.cvtColor(img16, cv2.COLOR_RGB2BGR))
    write_png(src / "flat.png", photo("coffee", (24, 16)))
    assert infer(ckpt, "--input", src, "--output", tmp_path / "out") == 0
    read = lambda p: cv2.imread(str(p), cv2.IMREAD_UNCHANGED)  # noqa: E731
    assert read(tmp_path / "out" / "deep.png").dtype == np.uint16
    assert read(tmp_path / "out" / "flat.png").dtype == np.uint8
    assert infer(ckpt, "--input", src, "--output", tmp_path / "o8", "--bit-depth", "8") == 0
    assert read(tmp_path / "o8" / "deep.png").dtype == np.uint8


def test_progress_in_a_log_is_one_bar_without_escape_codes(ckpt, tmp_path, capsys):
    write_png(tmp_path / "in" / "a.png", photo("coffee", (24, 16)))
    write_png(tmp_path / "in" / "b.png", photo("chelsea", (24, 16)))
    assert main(["infer", "--checkpoint", str(ckpt), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out"), "--sampler", "ddim", "--steps", "3", "--device", "cpu"]) == 0
    err = capsys.readouterr().err  # not a terminal
    assert "infer: 100%" in err and "2/2" in err
    assert "\x1b[" not in err and "steps:" not in err  # no per-step bar, no cursor movement


# -------------------------------------------------------------------------------------- train


def test_a_short_run_validates_at_its_end_and_says_so(pairs_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--manifest", str(pairs_dir), "--output-dir", "run", "--max-steps", "3",
                 "--val-count", "2", "--val-steps", "1", *TINY]) == 0
    out, err = capsys.readouterr()
    assert "validating on 2 pair(s) at the end of the run (step 3; --val-every 1000)" in err
    recs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (val,) = [r for r in recs if r["type"] == "val"]
    assert val["step"] == 3 and 0 < val["ssim"] <= 1
    # the summary's loss is the last one logged, and its paths are as typed
    last = [r for r in recs if r["type"] == "train"][-1]
    assert f"final loss {last['loss']:.4f} (mean of step 3, as logged)" in out
    assert "-> run/final" in out and str(tmp_path) not in out + err
    # the images carry their scores: a caption strip under the three 32-px panels
    pngs = sorted((tmp_path / "run" / "val" / "step-3").glob("*.png"))  # one per validation pair
    assert len(pngs) == 2
    sheet = cv2.imread(str(pngs[0]))
    assert sheet.shape[0] > 32 and sheet.shape[1] == 96 and sheet[32:].max() > 200


def test_validation_runs_every_n_steps_and_at_the_end(pairs_dir, tmp_path, capsys):
    assert main(["train", "--manifest", str(pairs_dir), "--output-dir", str(tmp_path / "run"), "--max-steps", "3",
                 "--val-every", "2", "--val-count", "1", "--val-steps", "1", *TINY]) == 0
    assert "every 2 steps and at the end of the run" in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "val"]
    assert steps == [2, 3]


def test_captions_carry_the_scores():
    from deblurdiff.train import captioned_row

    panel = photo("coffee", (64, 48)).astype(np.float32) / 255
    a = captioned_row([panel] * 3, [("blurry 20.00 dB", "SSIM 0.500"), ("output 30.00 dB", "SSIM 0.900"), ("sharp", "")])
    b = captioned_row([panel] * 3, [("blurry 20.00 dB", "SSIM 0.500"), ("output 31.00 dB", "SSIM 0.900"), ("sharp", "")])
    assert np.array_equal(a[:48], b[:48]) and np.array_equal(a[:48, :64], panel)  # the images themselves untouched
    assert not np.array_equal(a[48:, 64:128], b[48:, 64:128]) and np.array_equal(a[48:, :64], b[48:, :64])


def test_a_run_whose_every_step_is_non_finite_exits_1(pairs_dir, tmp_path, monkeypatch, capsys):
    from deblurdiff.model import DeblurDiff

    real = DeblurDiff.training_losses

    def poisoned(self, *a, **k):
        losses = real(self, *a, **k)
        losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(DeblurDiff, "training_losses", poisoned)
    assert main(["train", "--manifest", str(pairs_dir), "--output-dir", str(tmp_path / "run"), "--max-steps", "2",
                 "--val-every", "0", *TINY]) == 1
    out, err = capsys.readouterr()
    assert "every one of the 2 step(s) of this run had a non-finite loss" in err
    assert "final loss n/a (no finite step logged in this run)" in out
