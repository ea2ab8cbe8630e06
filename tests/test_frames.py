"""frames: averaging against an analytic ground truth, interpolation, decoders, bad clips, resume."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import cv2
import numpy as np
import pyarrow.dataset as ds
import pytest

from blurforge.blur import linear_to_srgb, srgb_to_linear
from blurforge.frames import parse_window, run_frames
from blurforge.manifest import read_errors, read_manifest, sha256_file
from blurforge.seeding import seed_for
from conftest import photo

H, W, X0, Y0 = 128, 192, 320, 40  # frame size and where frame 0 sits in the 512×512 astronaut


def texture() -> np.ndarray:
    return photo("astronaut")


def make_clip(path: Path, v: int, n: int, fourcc: str = "FFV1", fps: float = 30) -> Path:
    """A clip of the astronaut moving right by ``v`` px per frame: frame i is the crop at X0 - v·i."""
    tex = texture()
    assert X0 - v * (n - 1) >= 0
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (W, H))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc}"
    for i in range(n):
        writer.write(np.ascontiguousarray(tex[Y0 : Y0 + H, X0 - v * i : X0 - v * i + W, ::-1]))
    writer.release()
    return path


def continuous_blur(v: int, centre: int, window: int) -> np.ndarray:
    """Ground truth: the centre frame box-blurred horizontally over the motion during the window
    (every integer shift from -h·v to +h·v, averaged in linear light), as sRGB float."""
    tex = srgb_to_linear(texture() / np.float32(255))
    h = window // 2
    shifts = range(-h * v, h * v + 1)
    acc = sum(tex[Y0 : Y0 + H, X0 - v * centre - s : X0 - v * centre - s + W] for s in shifts)
    return linear_to_srgb(acc / len(shifts))


def rows_by_key(out: Path) -> dict:
    return {r["key"]: r for r in ds.dataset(out / "manifest", format="parquet").to_table().to_pylist()}


def errors_of(out: Path) -> list[dict]:
    return read_errors(out).to_pylist()


def blur_error(out: Path, v: int, window: int) -> float:
    """Mean abs error (sRGB, 0..1) of every pair's blurry image against ``continuous_blur``,
    on the interior (the border columns whose box reaches past the frame are left out)."""
    margin = (window // 2) * v + 8
    errs = []
    for r in rows_by_key(out).values():
        c = json.loads(r["params"])["centre"]
        got = cv2.imread(str(out / r["blur_path"]))[..., ::-1] / 255.0
        errs.append(np.abs(got - continuous_blur(v, c, window))[:, margin:-margin].mean())
    assert errs
    return float(np.mean(errs))


# ---------------------------------------------------------------------------- ground truth


@pytest.mark.parametrize("decoder", ["decord", "av"])
@pytest.mark.parametrize("fourcc,ext,tol", [("FFV1", "mkv", 0.0015), ("MJPG", "avi", 0.008)])
def test_average_is_the_box_blur_of_the_centre_frame(tmp_path, decoder, fourcc, ext, tol):
    # 1 px/frame, 9 frames: the average is exactly a 9-tap horizontal box in linear light.
    # Measured: FFV1 (lossless) 0.00098 = 8-bit rounding alone; MJPG 0.0049.
    make_clip(tmp_path / "v" / f"pan.{ext}", v=1, n=20, fourcc=fourcc)
    s = run_frames(tmp_path / "v", tmp_path / "out", seed=0, decoder=decoder, window=9, progress=False)
    assert (s.pairs, s.errors) == (2, 0)
    assert blur_error(tmp_path / "out", v=1, window=9) < tol
    for r in rows_by_key(tmp_path / "out").values():  # the sharp image is the centre frame, bit-exact
        c = json.loads(r["params"])["centre"]
        sharp = cv2.imread(str(tmp_path / "out" / r["sharp_path"]))[..., ::-1].astype(int)
        truth = texture()[Y0 : Y0 + H, X0 - c : X0 - c + W].astype(int)
        assert np.abs(sharp - truth).max() <= (0 if fourcc == "FFV1" else 40)


def test_interpolation_removes_ghosting_at_large_motion(tmp_path):
    # 8 px/frame, 5 frames: without in-betweens the average is 5 ghosts 8 px apart; with K=7
    # the virtual frames are 1 px apart, as the continuous 33 px box.
    # Measured: K=0 0.0184, K=7 0.00098 (the 8-bit rounding floor).
    make_clip(tmp_path / "v" / "fast.mkv", v=8, n=36)
    errors = {}
    for k in (0, 7):
        out = tmp_path / f"k{k}"
        s = run_frames(tmp_path / "v", out, seed=0, window=5, interpolate=k, progress=False)
        assert s.pairs == 7 and s.errors == 0
        errors[k] = blur_error(out, v=8, window=5)
    assert errors[0] > 0.012, errors
    assert errors[7] < 0.002, errors
    assert errors[0] > 5 * errors[7], errors


def test_interpolated_windows_sum_every_virtual_frame_once(tmp_path):
    # A REDS-like job's blurry images against an independent assembly of the same pieces: float64
    # sum of the window's 5 frames (response table) and of the in-betweens of its 4 frame pairs
    # (inbetween_sum with the job's flow settings), divided by 5 + 4·K and rounded once. The job
    # sums in float32, so a value may round to the neighbouring code now and then.
    from blurforge.frames import inbetween_sum, inverse_response_lut, make_flow, pair_flows
    from blurforge.video import open_video

    path = make_clip(tmp_path / "v" / "pan.mkv", v=5, n=16)
    s = run_frames(tmp_path / "v", tmp_path / "out", seed=0, window=5, interpolate=3, stride=5, progress=False)
    assert (s.pairs, s.errors) == (3, 0)
    with open_video(path) as clip:
        frames = list(clip)
    lut = inverse_response_lut("srgb")
    lin = [cv2.LUT(cv2.cvtColor(f, cv2.COLOR_RGB2RGBA), lut) for f in frames]
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    for r in rows_by_key(tmp_path / "out").values():
        p = json.loads(r["params"])
        assert p["virtual_frames"] == 17 and p["flow"] == "DIS-medium@0.25/nearer/nearest"
        acc = sum(lut[frames[j]].astype(np.float64) for j in p["frames"])
        for j in p["frames"][:-1]:
            f01, f10 = pair_flows(gray[j], gray[j + 1], make_flow())
            acc += inbetween_sum(lin[j], lin[j + 1], f01, f10, 3)[..., :3]
        x = np.clip(acc / 17, 0, 1)
        expected = np.floor(255 * np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055) + 0.5)
        got = cv2.imread(str(tmp_path / "out" / r["blur_path"]))[..., ::-1].astype(int)
        diff = np.abs(got - expected)
        assert diff.max() <= 1 and np.mean(diff) < 1e-3, (r["key"], diff.max(), np.mean(diff))


def test_a_still_clip_stays_sharp_with_in_betweens(tmp_path):
    # Nothing moves: every virtual frame is the frame itself, so the 65-frame average must be the
    # sharp frame, code for code (an in-between counted twice or left out would brighten or darken it).
    make_clip(tmp_path / "v" / "still.mkv", v=0, n=10)
    s = run_frames(tmp_path / "v", tmp_path / "out", seed=0, window=5, interpolate=15, stride=5, progress=False)
    assert (s.pairs, s.errors) == (2, 0)
    for r in rows_by_key(tmp_path / "out").values():
        blurry, sharp = (cv2.imread(str(tmp_path / "out" / r[k])) for k in ("blur_path", "sharp_path"))
        assert np.array_equal(blurry, sharp)


def test_a_failing_writer_thread_becomes_an_error_row_and_leaves_no_files(tmp_path, monkeypatch):
    import blurforge.imageio

    make_clip(tmp_path / "v" / "pan.mkv", v=1, n=20)
    real, calls = blurforge.imageio.encode_image, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 9:
            raise OSError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(blurforge.imageio, "encode_image", flaky)
    s = run_frames(tmp_path / "v", tmp_path / "out", seed=0, window=3, stride=1, progress=False)
    assert (s.pairs, s.errors) == (0, 1)
    (err,) = errors_of(tmp_path / "out")
    assert err["stage"] == "encode" and "OSError: disk full" in err["error"] and err["input"].endswith("pan.mkv")
    assert not [p for p in (tmp_path / "out").rglob("*.png")]


def test_gamma_response_differs_from_srgb_and_linear(tmp_path):
    make_clip(tmp_path / "v" / "pan.mkv", v=2, n=12)
    hashes = {}
    for response in ("srgb", "gamma2.2", "linear"):
        run_frames(tmp_path / "v", tmp_path / response, seed=0, window=5, response=response, progress=False)
        (row,) = [r for r in rows_by_key(tmp_path / response).values() if r["key"].endswith("/2")]
        assert json.loads(row["params"])["response"] == response
        hashes[response] = row["blur_sha256"]
    assert len(set(hashes.values())) == 3


# ------------------------------------------------------------------------------- decoders


@pytest.mark.parametrize("fourcc,ext", [("FFV1", "mkv"), ("MJPG", "avi")])
def test_decoders_give_the_same_frames(tmp_path, fourcc, ext):
    from blurforge.video import open_video

    path = make_clip(tmp_path / f"c.{ext}", v=3, n=12, fourcc=fourcc)
    with open_video(path, "decord") as a, open_video(path, "av") as b:
        fa, fb = list(a), list(b)
        assert a.reported_length == b.reported_length == 12
        assert a.fps == pytest.approx(b.fps) == pytest.approx(30)
        assert len(fa) == len(fb) == 12
        assert all(np.array_equal(x, y) for x, y in zip(fa, fb))
        assert fa[0].shape == (H, W, 3) and fa[0].dtype == np.uint8
        assert np.array_equal(a.read(7), fa[7]) and np.array_equal(b.read(7), fb[7])


# ------------------------------------------------------------------------------ bad clips


def test_bad_clips_become_error_rows(tmp_path):
    d = tmp_path / "v"
    make_clip(d / "good.mkv", v=2, n=12)
    make_clip(d / "short.mkv", v=2, n=3)
    (d / "text.mp4").write_text("not a video")
    (d / "empty.avi").write_bytes(b"")
    full = make_clip(tmp_path / "x.avi", v=2, n=30, fourcc="MJPG").read_bytes()
    (d / "truncated.avi").write_bytes(full[: len(full) // 2])
    damaged = bytearray(make_clip(tmp_path / "y.mkv", v=2, n=30).read_bytes())
    third = len(damaged) // 3
    damaged[third : third + 2000] = bytes((b * 7 + 13) % 256 for b in damaged[third : third + 2000])
    (d / "damaged.mkv").write_bytes(bytes(damaged))

    for decoder in ("decord", "av"):
        out = tmp_path / decoder
        s = run_frames(d, out, seed=0, decoder=decoder, window=5, progress=False)
        assert not s.failed
        clips = {json.loads(r["params"])["video"] for r in rows_by_key(out).values()}
        errs = {Path(e["input"]).name: e for e in errors_of(out)}
        assert "good.mkv" in clips
        assert {"short.mkv", "text.mp4", "empty.avi", "damaged.mkv"} <= errs.keys()
        assert not clips & errs.keys(), "a bad clip contributes no pairs"
        assert "fewer than the window" in errs["short.mkv"]["error"]
        assert errs["text.mp4"]["stage"] == errs["empty.avi"]["stage"] == "open"
        assert errs["damaged.mkv"]["stage"] in ("decode", "length")
        for name, e in errs.items():
            assert name in e["error"] and e["key"] == f"frames/seed0/{name}"
        # the files of dropped clips are removed; every listed file exists
        files = {p.relative_to(out).as_posix() for p in out.rglob("*.png")}
        listed = {r[c] for r in rows_by_key(out).values() for c in ("blur_path", "sharp_path")}
        assert files == listed
    # a truncated AVI keeps its header's frame count: PyAV reports 30 and decodes 15
    av_err = {Path(e["input"]).name: e for e in errors_of(tmp_path / "av")}["truncated.avi"]
    assert av_err["stage"] == "length" and "over-reported" in av_err["error"]
    # decord counts the packets that are left, so it decodes the remaining 15 frames cleanly
    assert "truncated.avi" in {json.loads(r["params"])["video"] for r in rows_by_key(tmp_path / "decord").values()}


class _FakeClip:
    """A decoder that lies: ``behaviour`` is over (reports 30, yields 20), under (reports 10,
    yields forever) or hang (blocks after 3 frames until released)."""

    def __init__(self, path, behaviour, release: threading.Event):
        from blurforge.video import VideoClip

        self.path, self.behaviour, self.decoder = str(path), behaviour, f"fake-{behaviour}"
        self.release = release
        self.reported_length = 10 if behaviour == "under" else 30
        self.length_source, self.fps = "index", 30.0
        self.close = lambda: None
        self.frame = texture()[:H, :W]
        assert VideoClip  # the interface these fakes stand in for

    def __iter__(self):
        i = 0
        while True:
            if self.behaviour == "over" and i == 20:
                return
            if self.behaviour == "hang" and i == 3:
                self.release.wait()
                return
            yield self.frame
            i += 1


@pytest.mark.parametrize("behaviour,stage,text", [
    ("over", "length", "over-reported"), ("under", "length", "kept yielding"), ("hang", "timeout", "timed out"),
])
def test_lying_or_hanging_decoders_are_recorded_not_trusted(tmp_path, monkeypatch, behaviour, stage, text):
    from blurforge import video

    release = threading.Event()
    monkeypatch.setitem(video.DECODERS, "fake", lambda p: _FakeClip(p, behaviour, release))
    make_clip(tmp_path / "v" / "a.mkv", v=1, n=2)
    try:
        s = run_frames(tmp_path / "v", tmp_path / "out", seed=0, decoder="fake", window=3, frame_timeout=0.5,
                       progress=False)
    finally:
        release.set()  # let an abandoned decoder thread finish
    assert (s.pairs, s.errors, s.failed) == (0, 1, [])
    (err,) = errors_of(tmp_path / "out")
    assert err["stage"] == stage and text in err["error"]
    assert not list((tmp_path / "out").rglob("*.png"))


# ------------------------------------------------------------------- rows, keys, resume


def test_rows_keys_seeds_and_window_ranges(tmp_path):
    make_clip(tmp_path / "v" / "sub" / "pan.mkv", v=1, n=40)
    out = tmp_path / "out"
    s = run_frames(tmp_path / "v", out, seed=5, window="3:9", stride=4, interpolate=1, progress=False)
    rows = rows_by_key(out)
    clip_group = "sha256:" + hashlib.sha256((tmp_path / "v" / "sub" / "pan.mkv").read_bytes()).hexdigest()
    centres = sorted(json.loads(r["params"])["centre"] for r in rows.values())
    assert centres == list(range(4, 36, 4)) and s.pairs == len(centres)  # H = 9 // 2, c + H < 40
    windows = set()
    for key, r in rows.items():
        p = json.loads(r["params"])
        assert key == f"frames/seed5/sub/pan.mkv/{p['centre']}"  # the run seed in the key: runs merge
        assert r["source"] == "frames" and r["seed"] == seed_for(5, f"frames/sub/pan.mkv/{p['centre']}")
        assert r["group"] == clip_group  # every window of the clip shares its split
        assert p["window"] in (3, 5, 7, 9) and p["frames"] == list(range(p["centre"] - p["window"] // 2,
                                                                            p["centre"] + p["window"] // 2 + 1))
        assert p["virtual_frames"] == p["window"] + (p["window"] - 1) * 1
        assert p["decoder"] == "decord" and p["clip_frames"] == 40 and p["virtual_fps"] == pytest.approx(60)
        assert (r["width"], r["height"]) == (W, H)
        assert sha256_file(out / r["blur_path"]) == r["blur_sha256"]
        windows.add(p["window"])
    assert len(windows) > 1, "a range draws different windows"
    assert len(read_manifest(out)) == len(rows)


@pytest.mark.parametrize("text,expected", [("7", (7, 7)), ("7:13", (7, 13)), (5, (5, 5)), ((3, 9), (3, 9))])
def test_parse_window(text, expected):
    assert parse_window(text) == expected


@pytest.mark.parametrize("bad", ["4", "0", "9:7", "7:12", "x", "1:3:5"])
def test_parse_window_rejects(bad):
    with pytest.raises(ValueError, match="--window"):
        parse_window(bad)


def _three_clips(d: Path) -> Path:
    for i, v in enumerate((1, 2, 3)):
        make_clip(d / f"c{i}.mkv", v=v, n=11)
    return d


def test_same_output_for_any_worker_count(tmp_path):
    d = _three_clips(tmp_path / "v")
    kw = dict(seed=3, window="3:5", interpolate=2, stride=2, shard_size=1, progress=False)
    run_frames(d, tmp_path / "w1", workers=1, **kw)
    run_frames(d, tmp_path / "w2", workers=2, **kw)
    a, b = rows_by_key(tmp_path / "w1"), rows_by_key(tmp_path / "w2")
    assert a.keys() == b.keys() and len(a) == 12
    assert all(a[k] == b[k] for k in a)


def test_resume_after_partial_run_matches_a_full_run(tmp_path):
    d = _three_clips(tmp_path / "v")
    kw = dict(seed=0, window=3, interpolate=1, shard_size=1, progress=False)
    run_frames(d, tmp_path / "ref", **kw)
    out = tmp_path / "out"
    run_frames(d, out, **kw)
    # as if killed: shard 1 wrote its tables but not its stats file, shard 2 never ran
    (out / "stats" / "shard-00001.json").unlink()
    for sub in ("manifest", "errors", "stats"):
        (out / sub / f"shard-00002.{'json' if sub == 'stats' else 'parquet'}").unlink()
    (out / "blur" / ".half.png.tmp").write_bytes(b"partial")
    s = run_frames(d, out, **kw)
    assert (s.shards, s.skipped) == (3, 1)
    a, b = rows_by_key(tmp_path / "ref"), rows_by_key(out)
    assert a == b
    assert not list(out.rglob("*.tmp"))
    with pytest.raises(ValueError, match="other settings"):
        run_frames(d, out, **{**kw, "window": 5})


def test_a_run_made_with_another_flow_setting_is_not_resumed(tmp_path):
    make_clip(tmp_path / "v" / "pan.mkv", v=2, n=8)
    kw = dict(seed=0, window=3, interpolate=1, progress=False)
    run_frames(tmp_path / "v", tmp_path / "out", **kw)
    run_json = tmp_path / "out" / "run.json"
    config = json.loads(run_json.read_text())
    assert config["flow"] == "DIS-medium@0.25/nearer/nearest"
    run_json.write_text(json.dumps({**config, "flow": "DIS-medium@0.5/nearer"}))  # as an older blurforge wrote it
    with pytest.raises(ValueError, match=r"other settings \(flow\)"):
        run_frames(tmp_path / "v", tmp_path / "out", **kw)
    run_frames(tmp_path / "v", tmp_path / "plain", seed=0, window=3, progress=False)
    assert "flow" not in json.loads((tmp_path / "plain" / "run.json").read_text())  # no in-betweens, no setting


def test_out_inside_videos_is_refused(tmp_path):
    make_clip(tmp_path / "v" / "pan.mkv", v=1, n=8)
    with pytest.raises(ValueError, match=r"--out .*frames is inside --videos .*v: .*choose an --out outside it"):
        run_frames(tmp_path / "v", tmp_path / "v" / "frames", seed=0, window=3, progress=False)
    assert not (tmp_path / "v" / "frames").exists()


# ------------------------------------------------------------------- averaging internals


@pytest.mark.parametrize("response", ["srgb", "gamma2.2", "linear"])
@pytest.mark.parametrize("window,stride", [(7, 1), (7, 2), ("3:9", 1), (5, 5), (5, 9)])
def test_running_window_sum_equals_re_averaging_bit_for_bit(response, window, stride):
    from blurforge.frames import _ClipAverager, inverse_response_lut, response_codes

    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (6, 5, 3)).astype(np.uint8) for _ in range(30)]
    cfg = {"window": list(parse_window(window)), "stride": stride, "interpolate": 0, "response": response, "seed": 4,
           "key_prefix": "frames"}
    avg = _ClipAverager(cfg, "clip")
    assert avg.running  # these tables sum exactly in float64
    lut = inverse_response_lut(response).astype(np.float64)
    got = [out for i, f in enumerate(frames) for out in avg.push(i, f)]
    assert len(got) >= 3
    for key, c, n, seed, blurry, sharp in got:
        h = n // 2
        # re-averaging, independently: each window summed afresh, last frame first
        acc = np.zeros((6, 5, 3))
        for j in reversed(range(c - h, c + h + 1)):
            acc += lut[frames[j]]
        expected = response_codes((acc / n).astype(np.float32), response)
        assert blurry.dtype == np.uint8 and np.array_equal(blurry, expected), (key, n)
        assert sharp is frames[c]


def test_running_sums_are_only_used_where_they_are_exact():
    from blurforge.frames import _exact_running_sum, inverse_response_lut

    assert _exact_running_sum(inverse_response_lut("srgb"), 4095)
    assert _exact_running_sum(inverse_response_lut("gamma2.2"), 4095)  # smallest step 2^-41: sums < 2^12
    assert not _exact_running_sum(inverse_response_lut("gamma2.2"), 4097)
    tiny = np.array([0.0, 1e-30, 1.0], np.float32)  # a step of ~1e-37: no float64 sum of these is exact
    assert not _exact_running_sum(tiny, 2)


@pytest.mark.parametrize("blend", ["both", "nearer"])
@pytest.mark.parametrize("k", [1, 2, 7, 15])
def test_inbetween_terms_weigh_every_virtual_frame_once(blend, k):
    from blurforge.frames import inbetween_terms

    terms = inbetween_terms(k, blend)
    assert sum(w for *_, w in terms) == pytest.approx(k)  # k in-betweens, each of total weight 1
    for frame, alpha, beta, weight in terms:
        # F_t0 = -(1-t)t F01 + t^2 F10, F_t1 = (1-t)^2 F01 - t(1-t) F10 for some t = i/(k+1)
        t = beta ** 0.5 if frame == 0 else 1 - alpha ** 0.5
        assert round(t * (k + 1), 9) == round(t * (k + 1)) and 0 < t < 1
        if blend == "nearer":
            assert (frame == 0 and t <= 0.5) or (frame == 1 and t > 0.5)  # t = 1/2: frame 0
    if blend == "nearer":
        assert len(terms) == k  # one warp per in-between


def _sample(image, x, y, warp):
    """``image`` (H×W×C) at the real positions ``(x, y)`` — nearest or bilinear, the border
    replicated — by plain indexing: the reference for cv2.remap."""
    h, w = image.shape[:2]
    if warp == "nearest":
        return image[np.clip(np.rint(y), 0, h - 1).astype(int), np.clip(np.rint(x), 0, w - 1).astype(int)]
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]

    def at(yy, xx):
        return image[np.clip(yy, 0, h - 1).astype(int), np.clip(xx, 0, w - 1).astype(int)].astype(np.float64)

    return ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
            + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))


@pytest.mark.parametrize("engine", ["auto", "opencv"])
@pytest.mark.parametrize("warp", ["nearest", "linear"])
@pytest.mark.parametrize("blend", ["nearer", "both"])
def test_inbetween_sum_is_the_sum_of_the_warped_frames(warp, blend, engine):
    # Every in-between warped by plain indexing (Super SloMo's flows at t = i/16, the nearer frame
    # or both blended) and summed in float64, against the banded cv2 rendering (engine "opencv";
    # "auto" takes the fused numba pass for the default nearer/nearest); 150 rows: three bands,
    # the last one short.
    from blurforge.frames import inbetween_sum

    rng = np.random.default_rng(4)
    h, w, k = 150, 90, 15
    a, b = (cv2.GaussianBlur(rng.random((h, w, 4), dtype=np.float32), (0, 0), 2) for _ in range(2))
    f01, f10 = (cv2.GaussianBlur(rng.normal(0, 500, (h, w, 2)).astype(np.float32), (0, 0), 12) for _ in range(2))
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    expected = np.zeros((h, w, 4))
    for i in range(1, k + 1):
        t = i / (k + 1)
        ft0, ft1 = -(1 - t) * t * f01 + t * t * f10, (1 - t) ** 2 * f01 - t * (1 - t) * f10
        w0 = (1 - t) if blend == "both" else float(t <= 0.5)
        if w0:
            expected += w0 * _sample(a, xx + ft0[..., 0], yy + ft0[..., 1], warp)
        if 1 - w0:
            expected += (1 - w0) * _sample(b, xx + ft1[..., 0], yy + ft1[..., 1], warp)
    assert np.abs(f01).max() > 20  # the warps reach well past the borders and the bands
    got = inbetween_sum(a, b, f01, f10, k, blend=blend, warp=warp, engine=engine)
    assert got.dtype == np.float32 and got.shape == a.shape
    err = np.abs(got - expected)
    if warp == "nearest":  # float32 maps may round a position within ~1e-5 px of a half the other way
        assert np.mean(err > 1e-4) < 1e-3
    else:  # OpenCV's bilinear weights are rounded (to 1/32 px at most)
        assert err.max() < 0.01 and err.mean() < 1e-3
    start = rng.random((h, w, 4), dtype=np.float32)
    with_start = inbetween_sum(a, b, f01, f10, k, blend=blend, warp=warp, initial=start, engine=engine)
    assert np.allclose(with_start, start + got, rtol=0, atol=1e-5)


def _tie_flows(rng, h, w):
    # Integer flows: with k = 3 the flows at t = 1/4, 1/2, 3/4 are (−3·F01 + F10)/16 and the like,
    # so many positions fall exactly half-way between pixels (both paths must round them to even).
    return [rng.integers(-40, 41, (h, w, 2)).astype(np.float32) for _ in range(2)]


def _fma_flows(rng, h, w, k):
    # x flows whose first in-between (t = 1/(k+1)) lands at a position that rounds one way when
    # α·F01 + β·F10 is one fused multiply-add (as cv2.addWeighted computes it) and the other way
    # when the two products are rounded separately; returns the flows and the share of such pixels.
    t = 1 / (k + 1)
    alpha, beta = np.float32(-(1 - t) * t), np.float32(t * t)
    xs = np.arange(w, dtype=np.float32)[None, :].repeat(h, 0)
    f10x = rng.uniform(-30, 30, (h, w)).astype(np.float32)
    p = f10x * beta
    aim = np.floor(rng.uniform(-20, 20, (h, w))) + 0.5  # a half-way flow value
    f0 = ((aim - p.astype(np.float64)) / alpha).astype(np.float32)
    chosen, found = f0.copy(), np.zeros((h, w), bool)
    for step in range(-64, 65):  # the floats next to f0
        fa = f0 + step * np.spacing(f0)
        fused = (fa.astype(np.float64) * alpha + p).astype(np.float32) + xs  # exact product, one rounding
        plain = (fa * alpha + p) + xs
        hit = ~found & (np.rint(fused) != np.rint(plain))
        chosen[hit], found[hit] = fa[hit], True
    f01, f10 = np.zeros((h, w, 2), np.float32), np.zeros((h, w, 2), np.float32)
    f01[..., 0], f10[..., 0] = chosen, f10x
    return f01, f10, found.mean()


@pytest.mark.parametrize("case", ["smooth, past the borders", "ties", "fused multiply-add", "photo flow, k=1",
                                  "odd size"])
def test_numba_engine_is_bit_identical_to_opencv(case):
    # The fused pass (blurforge.warpsum) promises the OpenCV rendering's exact bits: the flow at
    # t through cv2.addWeighted's fused multiply-add, positions rounded half to even, replicated
    # borders, the sum in the same order.
    from blurforge.frames import inbetween_sum, make_flow, pair_flows

    rng = np.random.default_rng(11)
    h, w, k = {"odd size": (37, 53, 15), "ties": (64, 96, 3)}.get(case, (120, 160, 15))
    if case == "photo flow, k=1":
        k = 1
    a, b = (rng.random((h, w, 4), dtype=np.float32) for _ in range(2))
    if case == "ties":
        f01, f10 = _tie_flows(rng, h, w)
        t = 0.25  # the first in-between: F_t0 = −(3/16)·F01 + (1/16)·F10
        x = -(1 - t) * t * f01[..., 0] + t * t * f10[..., 0]
        assert np.mean(x % 1 == 0.5) > 0.05
    elif case == "fused multiply-add":
        f01, f10, share = _fma_flows(rng, h, w, k)
        assert share > 0.1
    elif case == "photo flow, k=1":
        g = cv2.resize(cv2.cvtColor(photo("coffee", (w, h)), cv2.COLOR_RGB2GRAY), (w, h))
        f01, f10 = pair_flows(g, np.roll(g, (3, -5), axis=(0, 1)), make_flow())
    else:
        f01, f10 = (cv2.GaussianBlur(rng.normal(0, 300, (h, w, 2)).astype(np.float32), (0, 0), 9) for _ in range(2))
        assert np.abs(f01).max() > 30
    for initial in (None, rng.random((h, w, 4), dtype=np.float32)):
        fused = inbetween_sum(a, b, f01, f10, k, initial=initial, engine="numba")
        reference = inbetween_sum(a, b, f01, f10, k, initial=initial, engine="opencv")
        assert fused.dtype == np.float32 and np.array_equal(fused, reference)


def test_numba_engine_refuses_what_it_does_not_render():
    from blurforge.frames import inbetween_sum

    a = np.zeros((8, 8, 4), np.float32)
    f = np.zeros((8, 8, 2), np.float32)
    for settings in ({"warp": "linear"}, {"blend": "both"}):
        with pytest.raises(ValueError, match="numba engine"):
            inbetween_sum(a, a, f, f, 3, engine="numba", **settings)
    with pytest.raises(ValueError, match="numba engine"):
        inbetween_sum(a[..., :3], a[..., :3], f, f, 3, engine="numba")


def test_flow_interpolation_matches_a_densely_sampled_sub_pixel_pan():
    # 4.6 px per frame to the right and 1.3 px down, 5 frames + 4x15 in-betweens: the average of
    # the virtual frames against the mean of 65 densely rendered frames (bilinear shifts of the
    # photo in linear light), RMS difference of the 8-bit images in codes. The rule that chose the
    # default (README): it adds at most 0.8 code RMS, in quadrature, to the error of the most
    # accurate setting (DIS-medium at full size, both frames blended, bilinear). Measured at this
    # small size: the 5 frames alone 6.9 codes; the most accurate setting 0.94; the default
    # (DIS-medium at quarter size, nearer frame, nearest neighbour) 1.01, i.e. 0.36 of its own.
    from blurforge.frames import inbetween_sum, make_flow, pair_flows

    tex = srgb_to_linear(photo("astronaut", (360, 300)) / np.float32(255))
    size = (200, 128)

    def frame_at(tau):
        m = np.float32([[1, 0, 60 + 4.6 * tau], [0, 1, 40 + 1.3 * tau]])
        return cv2.warpAffine(tex, m, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)

    def codes(x):
        return np.rint(linear_to_srgb(x) * 255).astype(np.uint8)

    truth = codes((sum(frame_at(t).astype(np.float64) for t in np.arange(65) / 16) / 65).astype(np.float32))
    originals = [codes(frame_at(i)) for i in range(5)]
    lin = [srgb_to_linear(np.dstack([f, np.zeros_like(f[..., :1])]) / np.float32(255)) for f in originals]
    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in originals]

    def rms(mean):
        d = (codes(mean.astype(np.float32)).astype(float) - truth)[12:-12, 12:-12]
        return float(np.sqrt(np.mean(d**2)))

    def average(**settings):
        acc = sum(x[..., :3].astype(np.float64) for x in lin)
        flow = make_flow(settings.pop("preset")) if "preset" in settings else make_flow()
        for j in range(4):
            f01, f10 = pair_flows(gray[j], gray[j + 1], flow, *([settings.pop("scale")] if "scale" in settings else []))
            acc += inbetween_sum(lin[j], lin[j + 1], f01, f10, 15, **settings)[..., :3]
        return rms(acc / 65)

    plain = rms(sum(x[..., :3].astype(np.float64) for x in lin) / 5)
    default, best = average(), average(preset="medium", scale=1.0, blend="both", warp="linear")
    own = np.sqrt(max(default**2 - best**2, 0))
    assert plain > 5 and best < default < 1.5 and own <= 0.8, (plain, best, default, own)


def test_auto_engine_falls_back_to_opencv_without_numba(monkeypatch):
    # numba unusable (an import that fails): "auto" warns once and renders with OpenCV, the same
    # bits; asking for the numba engine by name raises.
    import sys

    from blurforge import frames
    from blurforge.frames import inbetween_sum

    rng = np.random.default_rng(5)
    a, b = (rng.random((24, 40, 4), dtype=np.float32) for _ in range(2))
    f01, f10 = (rng.normal(0, 3, (24, 40, 2)).astype(np.float32) for _ in range(2))
    expected = inbetween_sum(a, b, f01, f10, 7, engine="opencv")
    frames._fused_warp_sum.cache_clear()
    monkeypatch.setitem(sys.modules, "blurforge.warpsum", None)
    try:
        with pytest.warns(RuntimeWarning, match="numba is not usable"):
            got = inbetween_sum(a, b, f01, f10, 7)
        assert np.array_equal(got, expected)
        with pytest.raises(ImportError):
            inbetween_sum(a, b, f01, f10, 7, engine="numba")
    finally:
        frames._fused_warp_sum.cache_clear()
