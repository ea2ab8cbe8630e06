"""The blurforge command line as a newcomer meets it: exit statuses, summaries, messages that say
what to do, progress that moves, --help texts, and the direction of the modules' imports."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from blurforge import commands
from blurforge.cli import build_parser, main
from conftest import option_helps, package_imports, photo, write_png

ROOT = Path(__file__).resolve().parents[1]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    return dict(build_parser()._subparsers._group_actions[0].choices)


def synth(sharp, bank, out, *extra) -> int:
    return main(["synthesize", "--sharp", str(sharp), "--kernels", str(bank), "--out", str(out), "--seed", "7",
                 "--quiet", "--workers", "1", *map(str, extra)])


@pytest.fixture
def photos_with_one_broken(photos_dir, tmp_path) -> Path:
    d = tmp_path / "photos"
    shutil.copytree(photos_dir, d)
    (d / "broken.png").write_text("not an image")
    return d


def make_clip(path: Path, frames: int = 8):
    from blurforge.demo import write_demo_video

    return write_demo_video(path, frames=frames, size=(64, 48), speed=2)


# ------------------------------------------------------------------------------- exit statuses


def test_partial_success_exits_0_nothing_1_bad_input_2(photos_with_one_broken, small_bank, tmp_path, capsys):
    assert synth(photos_with_one_broken, small_bank, tmp_path / "partial") == 0  # 4 pairs, 1 failed input
    out, err = capsys.readouterr()
    assert "4 pairs in" in out and "1 failed input ->" in out and "broken.png" in err
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "a.png").write_text("x")
    (only_bad / "b.jpg").write_bytes(b"")
    assert synth(only_bad, small_bank, tmp_path / "none") == 1
    assert "no pair succeeded" in capsys.readouterr().err
    # bad inputs found before any work: 2, with the input named, nothing written
    assert synth(tmp_path / "missing", small_bank, tmp_path / "o1") == 2
    assert f"--sharp {tmp_path / 'missing'}" in capsys.readouterr().err and not (tmp_path / "o1").exists()
    assert synth(photos_with_one_broken, tmp_path / "no-bank.parquet", tmp_path / "o2") == 2
    assert "make one with 'blurforge kernels'" in capsys.readouterr().err
    # every command: 2 on a bad input
    assert main(["kernels", "--count", "2", "--size", "30", "--out", str(tmp_path / "k.parquet"), "--quiet"]) == 2
    assert main(["frames", "--videos", str(tmp_path / "no-videos"), "--out", str(tmp_path / "f")]) == 2
    assert main(["build-manifest", str(tmp_path / "nothing"), "--out", str(tmp_path / "m.parquet")]) == 2
    assert main(["inspect", str(tmp_path / "nothing.parquet")]) == 2
    assert main(["demo", "--out", str(photos_with_one_broken / "broken.png")]) == 2  # a file, not a folder
    assert "error:" in capsys.readouterr().err


def test_frames_partial_success_and_nothing(tmp_path, capsys):
    videos = tmp_path / "videos"
    make_clip(videos / "pan.avi")
    (videos / "notes.mp4").write_text("not a video")
    options = ["--window", "3", "--decoder", "av", "--quiet", "--workers", "1"]
    assert main(["frames", "--videos", str(videos), "--out", str(tmp_path / "f"), *options]) == 0
    out, err = capsys.readouterr()
    assert re.search(r"frames: \d+ pairs in .*, 1 failed input ->", out) and "notes.mp4" in err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "notes.mp4").write_text("not a video")
    assert main(["frames", "--videos", str(tmp_path / "bad"), "--out", str(tmp_path / "f2"), *options]) == 1
    assert "no pair succeeded" in capsys.readouterr().err


def test_build_manifest_exit_statuses(photos_with_one_broken, small_bank, tmp_path, capsys):
    assert synth(photos_with_one_broken, small_bank, tmp_path / "pairs", "--pairs-per-image", 3) == 0
    capsys.readouterr()
    # partial success carried: 0, the failed input named once although it has 3 error rows
    m = tmp_path / "m.parquet"
    assert main(["build-manifest", str(tmp_path / "pairs"), "--out", str(m)]) == 0
    out, err = capsys.readouterr()
    assert "12 pairs from 1 input(s)" in out and ", 1 failed input (failed inputs:" in out
    assert "1 failed input(s) (3 error rows" in err and err.count("broken.png") == 1
    # inputs without a single pair: 1, nothing written
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "a.png").write_text("x")
    assert synth(only_bad, small_bank, tmp_path / "empty") == 1
    capsys.readouterr()
    assert main(["build-manifest", str(tmp_path / "empty"), "--out", str(tmp_path / "e.parquet")]) == 1
    assert "hold no pair — nothing written" in capsys.readouterr().err
    assert not (tmp_path / "e.parquet").exists()


def test_a_shard_that_still_fails_exits_1_with_the_command_that_resumes(photos_dir, small_bank, tmp_path,
                                                                          monkeypatch, capsys):
    import blurforge.synthesize as synthesize

    real = synthesize.synthesize_worker

    def crash(task):
        raise MemoryError("worker killed")

    monkeypatch.setattr(synthesize, "synthesize_worker", crash)
    argv = ["synthesize", "--sharp", str(photos_dir), "--kernels", str(small_bank), "--out", str(tmp_path / "o"),
            "--quiet", "--workers", "1", "--retries", "1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "shard shard-00000 failed after 1 retries: MemoryError: worker killed" in err
    assert f"re-run the same command to resume:\n  {shlex.join(['blurforge', *argv])}" in err
    monkeypatch.setattr(synthesize, "synthesize_worker", real)
    assert main(argv) == 0


def test_interrupt_exits_130_with_the_command_that_resumes(monkeypatch, capsys, tmp_path):
    import blurforge.cli as cli

    def interrupted(**options):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "synthesize", interrupted)
    argv = ["synthesize", "--sharp", "my photos", "--kernels", "k.parquet", "--out", "pairs/"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted — finished work is kept; resume with:\n  blurforge synthesize --sharp 'my photos'" in err


def test_the_exit_rule_is_in_the_help_and_the_readme():
    top = build_parser().format_help()
    readme = (ROOT / "README.md").read_text()
    for text in (top, readme):
        assert "exit status" in text.lower()
        for status in ("0", "1", "2", "130"):
            assert re.search(rf"(^|\W){status}(\W|$)", text)
    assert commands.EXIT_RULE in top
    assert "Partial success is success" in readme


# ------------------------------------------------------------------------------------ summaries


def test_resumed_runs_say_what_was_already_done(photos_dir, small_bank, tmp_path, capsys):
    out = tmp_path / "o"
    assert synth(photos_dir, small_bank, out, "--shard-size", "3", "--pairs-per-image", "2") == 0  # 8 pairs, 3 shards
    capsys.readouterr()
    assert synth(photos_dir, small_bank, out, "--shard-size", "3", "--pairs-per-image", "2") == 0
    text = capsys.readouterr().out
    assert f"synthesize: nothing left to do: 8 pairs in 3 shards already done -> {out}/manifest" in text
    assert "pairs/s" not in text
    # one shard lost: it is redone, the rest is counted as earlier work
    (out / "stats" / "shard-00001.json").unlink()
    assert synth(photos_dir, small_bank, out, "--shard-size", "3", "--pairs-per-image", "2") == 0
    text = capsys.readouterr().out
    assert re.search(r"synthesize: 3 pairs in [\d.]+ s \([\d.]+ pairs/s; .*\); 5 pairs in 2 shards already done, "
                     r"8 in all ->", text), text


def test_a_resumed_run_with_nothing_usable_still_exits_1(small_bank, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_text("x")
    assert synth(bad, small_bank, tmp_path / "o") == 1
    assert synth(bad, small_bank, tmp_path / "o") == 1
    out, err = capsys.readouterr()
    assert "nothing left to do: 0 pairs in 1 shard already done, 1 failed input" in out
    assert "a.png" in err


def test_failed_inputs_are_counted_once_whatever_pairs_per_image(photos_with_one_broken, small_bank, tmp_path,
                                                                  capsys):
    assert synth(photos_with_one_broken, small_bank, tmp_path / "o", "--pairs-per-image", "3") == 0
    out, err = capsys.readouterr()
    assert "12 pairs in" in out and ", 1 failed input ->" in out and "3 failed" not in out
    assert "1 failed input(s) (3 error rows: read 3;" in err and "(x3)" in err


def test_summary_paths_are_shown_as_typed(photos_with_one_broken, small_bank, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(small_bank, "k.parquet")
    assert main(["synthesize", "--sharp", "photos", "--kernels", "k.parquet", "--out", "pairs/", "--quiet",
                 "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    assert "-> pairs/manifest (failed inputs: pairs/errors)" in out
    assert "[read] photos/broken.png: not a recognised image" in err
    assert str(tmp_path) not in out + err  # one form: as typed, relative
    assert main(["build-manifest", "pairs", "--out", "m.parquet"]) == 0
    out, err = capsys.readouterr()
    assert "photos/broken.png" in err and str(tmp_path) not in out + err
    assert main(["inspect", "m.parquet"]) == 0
    out = capsys.readouterr().out
    assert "[read] photos/broken.png" in out and str(tmp_path) not in out


# ------------------------------------------------------------------------------------- messages


def test_build_manifest_says_what_a_folder_is_and_what_to_run(photos_dir, small_bank, tmp_path, capsys):
    m = str(tmp_path / "m.parquet")
    assert main(["build-manifest", str(photos_dir), "--out", m]) == 2
    err = capsys.readouterr().err
    assert f"{photos_dir}: a folder of 4 image(s), not a blurforge output" in err
    assert f"blurforge synthesize --sharp {photos_dir}" in err and "--import NAME=PATH" in err
    assert "did the run finish" not in err
    make_clip(tmp_path / "clips" / "a.avi")
    assert main(["build-manifest", str(tmp_path / "clips"), "--out", m]) == 2
    assert f"blurforge frames --videos {tmp_path / 'clips'}" in capsys.readouterr().err
    for side in ("blur", "sharp"):
        write_png(tmp_path / "gopro" / "train" / "SEQ1" / side / "000001.png", photo("coffee", (32, 24)))
    assert main(["build-manifest", str(tmp_path / "gopro"), "--out", m]) == 2
    assert f"--import NAME={tmp_path / 'gopro'}" in capsys.readouterr().err
    # a run that has not finished a shard yet: resume it
    run = tmp_path / "run"
    (run / "manifest").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    assert main(["inspect", str(run)]) == 2
    assert "no finished shard yet" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["build-manifest", str(tmp_path / "empty"), "--out", m]) == 2
    assert "holds no manifest (no .parquet file)" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["1", "2"])  # decoding in the command's process, and in a pool
def test_decoder_log_output_stays_off_the_console(tmp_path, workers):
    """decord prints FFmpeg's and its own errors to stderr itself; they must not reach the console
    (a fresh process: the library's log level is process-wide), while the error rows keep the reason."""
    pytest.importorskip("decord")
    videos = tmp_path / "videos"
    make_clip(videos / "good.avi", frames=12)
    (videos / "text.mp4").write_text("not a video")
    damaged = bytearray(make_clip(tmp_path / "d.avi", frames=30).read_bytes())
    third = len(damaged) // 3
    damaged[third : third + 2000] = bytes((b * 7 + 13) % 256 for b in damaged[third : third + 2000])
    (videos / "damaged.avi").write_bytes(bytes(damaged))
    proc = subprocess.run([sys.executable, "-m", "blurforge", "frames", "--videos", str(videos), "--out",
                           str(tmp_path / "f"), "--window", "3", "--decoder", "decord", "--quiet", "--workers", workers],
                          capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr  # (decord used to abort the interpreter's teardown: -6)
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith(("frames: ", "  [")) for line in lines), proc.stderr
    assert not re.search(r"@ 0x[0-9a-f]+\]|ERROR opening|\.cc:\d+", proc.stderr), proc.stderr
    from blurforge.manifest import read_errors

    errors = {Path(e["input"]).name: e["error"] for e in read_errors(tmp_path / "f").to_pylist()}
    assert "Invalid data found when processing input" in errors["text.mp4"]


# ------------------------------------------------------------------------------------- progress


class _Recorder:
    """Wraps shards._Progress to record every report the driver applied."""

    def __init__(self, monkeypatch):
        import blurforge.shards as shards

        self.reports, self.bars = [], []
        recorder = self

        class Recording(shards._Progress):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                recorder.bars.append(self)

            def _apply(self, message):
                recorder.reports.append(message)
                super()._apply(message)

        monkeypatch.setattr(shards, "_Progress", Recording)


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_counts_pairs_while_shards_run(photos_dir, small_bank, tmp_path, monkeypatch, workers):
    rec = _Recorder(monkeypatch)
    s = commands.synthesize(sharp=str(photos_dir), kernels=str(small_bank), out=str(tmp_path / "o"),
                            pairs_per_image=2, shard_size=3, workers=workers)
    assert s == 0
    bar = rec.bars[0].bar
    assert bar.total == 8 and bar.n == 8 and bar.unit == "pair"  # pairs, not 3 shards
    by_shard: dict[str, list[int]] = {}
    for shard, items, pairs, errors in rec.reports:
        by_shard.setdefault(shard, []).append(items)
    # every item was reported as it finished, from the pool's processes too
    assert by_shard == {"shard-00000": [1, 2, 3], "shard-00001": [1, 2, 3], "shard-00002": [1, 2]}


def test_a_long_clip_shows_its_pairs_while_it_runs(tmp_path, monkeypatch):
    rec = _Recorder(monkeypatch)
    make_clip(tmp_path / "v" / "a.avi", frames=10)
    assert commands.frames(videos=str(tmp_path / "v"), out=str(tmp_path / "o"), window="3", stride=1, workers=1,
                           decoder="av") == 0
    # one clip, 8 windows: the pair count moves pair by pair before the clip is counted done
    assert [r[1:3] for r in rec.reports] == [(0, n) for n in range(1, 9)] + [(1, 8)]
    assert rec.bars[0].bar.n == 1


def test_progress_settles_shards_that_report_nothing_or_fail():
    """A Ray task reports nothing until its shard is done; a failed attempt's items are taken back."""
    from blurforge.shards import ShardTask, _Progress

    tasks = [ShardTask("shard-00000", (1, 2, 3), "o"), ShardTask("shard-00001", (4, 5), "o")]
    p = _Progress(tasks, "t", "pair", enabled=True)
    assert p.bar.total == 5
    p.report(("shard-00001", 1, 1, 0))
    p.finished({"shard": "shard-00001", "status": "failed"}, tasks[1])
    assert p.bar.n == 0
    p.finished({"shard": "shard-00000", "status": "done", "pairs": 3, "errors": 0}, tasks[0])  # no reports
    p.report(("shard-00001", 1, 1, 0))
    p.report(("shard-00001", 2, 1, 1))
    p.finished({"shard": "shard-00001", "status": "done", "pairs": 1, "errors": 1}, tasks[1])
    assert p.bar.n == 5 and (p.pairs, p.errors) == (4, 1) and not p.live
    p.close()


# ------------------------------------------------------------------------------------ --help


def test_help_shows_each_default_once_and_only_when_it_means_something():
    for name, sp in subcommands().items():
        text = sp.format_help()
        for bad in ("(default: None)", "(default: )", "(default: [])", "(default: False)", "(default: ())"):
            assert bad not in text, f"blurforge {name} --help: {bad}"
        for option, help_ in option_helps(sp).items():
            assert help_.count("default") <= 1, f"blurforge {name} {option}: {help_}"
            assert help_.count("default") == help_.count("(default: "), f"blurforge {name} {option}: {help_}"


def test_every_command_has_runnable_examples():
    parser = build_parser()
    for name, sp in subcommands().items():
        examples = [line.split("#")[0].strip() for line in (sp.epilog or "").splitlines()
                    if line.strip().startswith(f"blurforge {name}")]
        assert 1 <= len(examples) <= 3, name
        for line in examples:
            parser.parse_args(shlex.split(line)[1:])  # exits (a failure) on an unknown or missing option


def test_help_names_the_accepted_files():
    from blurforge.cli import IMAGE_TYPES, VIDEO_TYPES
    from blurforge.imageio import IMAGE_EXTENSIONS
    from blurforge.video import VIDEO_EXTENSIONS

    assert IMAGE_TYPES.split() == list(IMAGE_EXTENSIONS)
    assert VIDEO_TYPES.split() == list(VIDEO_EXTENSIONS)
    helps = subcommands()
    assert IMAGE_TYPES in " ".join(helps["synthesize"].format_help().split())
    assert VIDEO_TYPES in " ".join(helps["frames"].format_help().split())


def test_parser_defaults_are_the_command_functions_defaults():
    """The demo calls the command functions without the parser: their defaults must agree."""
    from blurforge.frames import parse_window
    from blurforge.segment import DEFAULT_SAM2_CONFIG

    assert commands.SAM2_CONFIG == DEFAULT_SAM2_CONFIG
    for name, sp in subcommands().items():
        func = sp.get_default("func")
        params = inspect.signature(func).parameters
        for action in sp._actions:
            if action.dest in ("help", "func"):
                continue
            assert action.dest in params, f"blurforge {name}: {action.dest} is not a parameter of {func.__name__}"
            default = params[action.dest].default
            if action.required or default is inspect.Parameter.empty:
                assert action.required or not action.option_strings, f"{name} {action.dest}"
                continue
            if action.dest == "workers":
                assert default is None  # None: the usable CPUs, which the parser shows as a number
            elif action.dest == "window":
                assert parse_window(action.default) == parse_window(default)
            else:
                assert action.default == default or (action.default == [] and default == ()), \
                    f"blurforge {name} {action.dest}: parser {action.default!r}, function {default!r}"


# ------------------------------------------------------------------------------- module structure




def test_the_cli_layer_depends_one_way():
    """cli -> demo -> commands -> the library; nothing below imports what is above it."""
    graph = {p.stem: package_imports(p, "blurforge") for p in (ROOT / "blurforge").glob("*.py")}
    layers = {"cli": 0, "demo": 1, "commands": 2}
    for module, deps in graph.items():
        if module == "__main__":
            assert deps == {"cli"}
            continue
        level = layers.get(module, 3)  # 3: the library
        for dep in deps & layers.keys():
            assert layers[dep] > level, f"blurforge.{module} imports blurforge.{dep}"
    assert "demo" in graph["cli"] and "commands" in graph["demo"] and "cli" not in graph["demo"]


def test_help_imports_nothing_heavy():
    code = ("import sys, blurforge.cli as c; c.build_parser().format_help(); "
            "print(sorted(m for m in ('cv2', 'pyarrow', 'numpy', 'tqdm', 'torch') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------ demo


def test_demo_prints_the_commands_it_runs():
    """Each step's printed command line parses back to the options the demo passed."""
    from blurforge.demo import command_line, demo_steps
    from blurforge.frames import parse_window

    parser = build_parser()
    for command, func, options, positional in demo_steps(Path("demo_out"), "av", small=True):
        line = command_line(command, options, positional)
        ns = vars(parser.parse_args(shlex.split(line)[1:]))
        assert ns["func"] is func
        for key, value in options.items():
            got = ns[key]
            if key == "window":
                assert got == parse_window(value)
            else:
                assert got == value, (line, key)


def test_demo_runs_resumes_and_names_every_errors_table(tmp_path, capsys):
    from blurforge.demo import MODES, run_demo

    out = tmp_path / "demo"
    assert run_demo(out, quiet=True, max_side=128) == 0
    first = capsys.readouterr().out
    assert run_demo(out, quiet=True, max_side=128) == 0  # a re-run resumes
    text = capsys.readouterr().out
    assert text.count("nothing left to do:") == 4 and "pairs/s" not in text
    last = first.splitlines()[-1]
    assert str(out / "manifest.errors.parquet") in last
    for run in ("uniform", "uniform-rsblur", "nonuniform"):  # every table holding the broken photo
        assert f"{out / run / 'errors'} (" in last
    assert "frames/errors" not in last  # the clip did not fail
    merged = json.loads(subprocess.run([sys.executable, "-m", "blurforge", "inspect", str(out / "manifest.parquet"),
                                        "--json"], capture_output=True, text=True, cwd=ROOT, timeout=120,
                                       env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout)
    # one error row per pair the broken photo was to give, in every synthesize run (small mode)
    assert merged["errors"]["inputs"] == 1 and merged["errors"]["count"] == sum(MODES["small"]["pairs"].values())


def run_into_a_closed_pipe(*argv: str) -> subprocess.CompletedProcess:
    """Run ``python -m ARGV`` with its stdout a pipe whose reader has already gone ('... | head')."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", *argv], stdout=w, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                              timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    finally:
        os.close(w)


def test_a_reader_that_leaves_early_gets_no_traceback(photos_dir, small_bank, tmp_path):
    assert synth(photos_dir, small_bank, tmp_path / "o") == 0
    proc = run_into_a_closed_pipe("blurforge", "inspect", str(tmp_path / "o"), "--json")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    proc = run_into_a_closed_pipe("deblurdiff", "describe", "--preset", "msgd-tiny")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
