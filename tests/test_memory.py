"""Workers keep freed image-sized blocks for reuse (shards.reuse_freed_images): no output byte may
depend on it, i.e. no array is read before it is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import digest_tree, photo, write_png
from test_frames import make_clip

JOBS = r"""
import sys
from pathlib import Path
import blurforge.shards as shards
from blurforge.frames import run_frames
from blurforge.synthesize import run_synthesize

if sys.argv[1] == "fresh":
    shards._MALLOC_TUNED = True  # never tune: every image-sized array is a fresh, zero-filled mapping
photos, bank, clips, out = (Path(p) for p in sys.argv[2:6])
run_synthesize(photos, bank, out / "uniform", seed=3, workers=1, progress=False, noise="rsblur", saturation=True)
run_synthesize(photos, bank, out / "nonuniform", seed=3, workers=1, progress=False, mode="nonuniform",
               segmenter="classical")
run_frames(clips, out / "frames", seed=3, window=5, interpolate=3, stride=2, progress=False)
print("tuned" if shards._MALLOC_TUNED and sys.argv[1] == "reuse" else sys.argv[1])
"""


def test_reused_memory_changes_no_output_byte(tmp_path, small_bank):
    # 320×240 photos and 192×128 RGBA float frames are over glibc's default mmap threshold
    # (128 KiB), so without the tuning each is a fresh zeroed mapping; with it, the blocks of
    # earlier pairs come back holding their old values. Two fresh interpreters, same bytes.
    photos = tmp_path / "photos"
    for name in ("astronaut", "coffee", "chelsea"):
        write_png(photos / f"{name}.png", photo(name, (320, 240)))
    clips = tmp_path / "clips"
    make_clip(clips / "pan.avi", 6, 12)
    digests = {}
    for mode in ("reuse", "fresh"):
        out = tmp_path / mode
        run = subprocess.run([sys.executable, "-c", JOBS, mode, str(photos), str(small_bank), str(clips), str(out)],
                             capture_output=True, text=True, cwd=tmp_path)
        assert run.returncode == 0, run.stderr[-3000:]
        assert run.stdout.split()[-1] == ("tuned" if mode == "reuse" else "fresh")
        assert len(list((out / "frames").rglob("*.png"))) >= 6
        digests[mode] = digest_tree(out)
    assert digests["reuse"] == digests["fresh"]
