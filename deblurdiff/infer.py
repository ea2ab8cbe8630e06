"""``deblurdiff infer``: deblur images (a file, a folder, or a manifest split) with a checkpoint.

For each image (``H×W×3`` float32 sRGB in [0, 1]):

1. reflect-pad to the model's size multiple (:func:`deblurdiff.tiling.size_multiple`);
2. encode to ``z_lq`` (tiled above ``--tile-size``);
3. sample from ``z_T ~ N(0, I)`` with the chosen sampler (:mod:`deblurdiff.sampling`), the
   kernels re-estimated at every step; above ``--tile-size`` the noise prediction is blended
   from Gaussian-weighted latent tiles at every step (:class:`deblurdiff.tiling.TiledDenoiser`);
4. decode (tiled above ``--tile-size``), crop back to ``H×W``;
5. colour-fix against the input (``adain``: per-channel mean/std in RGB, as the paper's code;
   ``wavelet``: the output's high frequencies over the input's low frequencies).

Each image's noise comes from its own generator seeded by ``seed_for(--seed, key)`` (key = the
manifest key, or the input's path relative to the input folder), so a result does not depend on
the order, the batch or which other images are in the run. Same seed, inputs, batch size and
device ⇒ identical output files.

Outputs: ``OUTPUT/<relative path>.png`` (folder input), ``OUTPUT/<stem>.png`` (file input),
``OUTPUT/<prediction_name(key)>`` (manifest input, what ``deblurdiff evaluate`` looks for), plus
``OUTPUT/infer.json`` (settings, counts, failures). Inputs are never overwritten: an output
folder that is (or lies inside) the input folder or the manifest's folder is refused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

COLOR_FIXES = ("adain", "wavelet", "none")
DTYPE_NAMES = ("fp32", "bf16", "fp16")


# ------------------------------------------------------------------------------------- naming


def prediction_name(key: str) -> str:
    """The output file name of the manifest row ``key``: the key made safe as a file name, plus
    ``.png``. Keys that needed changing get 8 hex digits of their SHA-256, so two keys never
    share a file (``a/b`` -> ``a_b-<hash>.png``, ``a_b`` -> ``a_b.png``)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key)
    if safe != key or safe.startswith(".") or not safe:
        safe = f"{safe.lstrip('.')}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:8]}"
    return safe + ".png"


# ---------------------------------------------------------------------------------- colour fix


def adain_color_fix(out, ref):
    """(B, 3, H, W) ``out`` with each channel's mean and std replaced by ``ref``'s (RGB, [0, 1])."""
    dims = (-2, -1)
    mu_o, sd_o = out.mean(dims, keepdim=True), out.std(dims, keepdim=True)
    mu_r, sd_r = ref.mean(dims, keepdim=True), ref.std(dims, keepdim=True)
    return ((out - mu_o) / (sd_o + 1e-6) * sd_r + mu_r).clamp(0, 1)


def _dilated_blur(x, dilation: int):
    """Separable [1, 2, 1] / 4 blur with holes (à trous), replicate borders; (B, C, H, W)."""
    import torch
    import torch.nn.functional as F

    c = x.shape[1]
    k = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    x = F.pad(x, (dilation, dilation, 0, 0), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 3).repeat(c, 1, 1, 1), groups=c, dilation=(1, dilation))
    x = F.pad(x, (0, 0, dilation, dilation), mode="replicate")
    return F.conv2d(x, k.view(1, 1, 3, 1).repeat(c, 1, 1, 1), groups=c, dilation=(dilation, 1))


def wavelet_split(x, levels: int = 5):
    """(high, low) of a blur pyramid: low = ``levels`` dilated blurs (dilation 1, 2, 4, ...), high = x - low."""
    low = x
    for i in range(levels):
        low = _dilated_blur(low, 2**i)
    return x - low, low


def wavelet_color_fix(out, ref, levels: int = 5):
    """``out``'s high frequencies over ``ref``'s low frequencies (RGB, [0, 1])."""
    return (wavelet_split(out, levels)[0] + wavelet_split(ref, levels)[1]).clamp(0, 1)


def color_fix(name: str, out, ref):
    if name == "adain":
        return adain_color_fix(out, ref)
    if name == "wavelet":
        return wavelet_color_fix(out, ref)
    if name == "none":
        return out
    raise ValueError(f"--color-fix {name!r} unknown — choose one of {', '.join(COLOR_FIXES)}")


# ------------------------------------------------------------------------------ device / dtype


def resolve_device(name: str | None):
    import torch

    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available — use --device cpu")
    return torch.device(name)


def resolve_dtype(name: str, device) -> tuple["object", str | None]:
    """(torch dtype, a note to print or None) for ``--dtype`` on ``device``."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
    if dtype is None:
        raise ValueError(f"--dtype {name!r} unknown — choose one of {', '.join(DTYPE_NAMES)}")
    if device.type == "cuda":
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise ValueError("--dtype bf16: this GPU has no bfloat16 support — use --dtype fp16 or fp32")
        return dtype, None
    if dtype == torch.bfloat16:
        return dtype, "--dtype bf16 on CPU works but is slow; fp32 is usually faster on CPU"
    if dtype == torch.float16:
        try:  # the ops the model needs, in half precision on this CPU build
            x = torch.ones(1, 8, 4, 4, dtype=dtype)
            torch.nn.functional.group_norm(torch.nn.functional.conv2d(x, torch.ones(8, 8, 3, 3, dtype=dtype)), 2)
        except RuntimeError as exc:
            return torch.float32, f"--dtype fp16 is not supported on this CPU ({exc}); falling back to fp32"
        return dtype, "--dtype fp16 on CPU works with this torch build but is slow; prefer fp32 on CPU"
    return dtype, None


def prepare_model(model, device, dtype):
    """Move and cast the model for inference. In fp16 the VAE stays in fp32 when its config asks
    for it (``force_upcast``: SD VAEs overflow in fp16); bf16 has fp32's range and is used as is."""
    import torch

    model = model.to(device=device, dtype=dtype).eval()
    if dtype == torch.float16 and model.vae.config.get("force_upcast", False):
        model.vae.to(torch.float32)
    return model


# ------------------------------------------------------------------------------------ deblurring


@dataclass
class InferSettings:
    """How to deblur (the CLI's sampling options)."""

    sampler: str = "ddpm"  # ddpm | ddim | dpmsolver
    steps: int | None = None  # None = sampling.DEFAULT_STEPS[sampler]
    seed: int = 0
    tile_size: int | None = 512  # pixels; None = never tile
    tile_overlap: int = 128  # pixels
    color_fix: str = "adain"  # adain | wavelet | none
    timestep_spacing: str | None = None  # leading | linspace | trailing; None = the checkpoint's
    samples: int = 1  # sample averaging (MSGD checkpoints only)

    def n_steps(self) -> int:
        from deblurdiff.sampling import DEFAULT_STEPS

        return self.steps if self.steps is not None else DEFAULT_STEPS[self.sampler]


class Deblurrer:
    """``Deblurrer(model, settings)(images, keys) -> images``: the inference pipeline for a batch
    of same-size ``H×W×3`` float32 sRGB arrays in [0, 1]. ``model`` is already on its device and
    dtype (:func:`prepare_model`)."""

    def __init__(self, model, settings: InferSettings, progress: bool = False):
        from deblurdiff.sampling import SAMPLERS
        from deblurdiff.tiling import check_tiling, size_multiple

        if settings.sampler not in SAMPLERS:
            raise ValueError(f"--sampler {settings.sampler!r} unknown — choose one of {', '.join(SAMPLERS)}")
        if settings.color_fix not in COLOR_FIXES:
            raise ValueError(f"--color-fix {settings.color_fix!r} unknown — choose one of {', '.join(COLOR_FIXES)}")
        if settings.samples != 1:
            raise ValueError(f"--samples {settings.samples}: sample averaging is implemented for MSGD checkpoints "
                             "only — use --samples 1 with DeblurDiff")
        check_tiling(model, settings.tile_size, settings.tile_overlap)
        self.model = model
        self.settings = settings
        self.progress = progress
        self.multiple = size_multiple(model)
        self.sample = SAMPLERS[settings.sampler]

    @property
    def device(self):
        return next(self.model.unet.parameters()).device

    def __call__(self, images: list[np.ndarray], keys: list[str], intermediates: list[Path] | None = None
                 ) -> list[np.ndarray]:
        import torch

        from blurforge.seeding import seed_for
        from deblurdiff.tiling import TiledDenoiser, pad_to_multiple, tiled_decode, tiled_encode

        s, model = self.settings, self.model
        x = images_to_batch(images, self.device)
        xp, (h, w) = pad_to_multiple(x, self.multiple)
        f = model.vae_scale_factor
        big = s.tile_size is not None and max(xp.shape[-2:]) > s.tile_size
        tile = s.tile_size if big else None

        with torch.no_grad():
            gens = [torch.Generator().manual_seed(seed_for(s.seed, k)) for k in keys]
            # the blurry latent (a posterior draw from each image's generator if the model samples)
            z_lq = tiled_encode(model, xp, tile, s.tile_overlap, generator=gens, blurry=True)
            denoiser = TiledDenoiser(model, s.tile_size // f, s.tile_overlap // f) if big else model
            spacing = s.timestep_spacing or getattr(model.config, "timestep_spacing", None)

            def decode(z):
                return tiled_decode(model, z, tile, s.tile_overlap).float()[..., :h, :w]

            callback = None
            if intermediates is not None:
                from blurforge.imageio import encode_image, write_bytes_atomic

                def callback(info):
                    for name, z in (("zs", info["z_s"]), ("z0", info["x0"])):
                        for img, d in zip(_to_numpy(decode(z)), intermediates):
                            write_bytes_atomic(d / f"step-{info['i']:03d}_{name}.png", encode_image(img))

            z0 = self.sample(denoiser, z_lq, s.n_steps(), gens, callback=callback, progress=self.progress,
                             timestep_spacing=spacing)
            out = color_fix(s.color_fix, decode(z0), x)
        return _to_numpy(out)


def images_to_batch(images: list[np.ndarray], device):
    """Same-size ``H×W×3`` float32 arrays -> a (B, 3, H, W) float32 tensor on ``device``."""
    import torch

    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"a batch must hold images of one size, got {sorted(shapes)}")
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).to(device, torch.float32)


def _to_numpy(batch) -> list[np.ndarray]:
    return list(batch.permute(0, 2, 3, 1).float().cpu().numpy())


# ------------------------------------------------------------------------------------ inputs


@dataclass
class Job:
    """One image to deblur: its input file, its seed key and its output path relative to OUTPUT."""

    path: Path
    key: str
    name: str


def is_manifest(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".parquet"
    return path.is_dir() and ((path / "manifest").is_dir() or any(path.glob("*.parquet")))


def collect_jobs(input_path: str, split: str) -> tuple[list[Job], Path, set[Path]]:
    """(jobs, the input folder outputs must stay out of, every input file path (protected))."""
    from blurforge.imageio import find_images

    src = Path(input_path)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder — pass an image, a folder of images or a manifest")
    if is_manifest(src):
        from blurforge.manifest import read_manifest

        m = read_manifest(src)
        rows = m.table.select(["key", "blur_path", "sharp_path", "split"]).to_pylist()
        protected = {m.abspath(r[c]).resolve() for r in rows for c in ("blur_path", "sharp_path")}
        chosen = [r for r in rows if split == "all" or r["split"] == split]
        if not chosen:
            have = sorted({r["split"] for r in rows})
            raise ValueError(f"{src}: no rows in split {split!r} (splits present: {', '.join(have)}) — pass --split")
        jobs = [Job(m.abspath(r["blur_path"]), r["key"], prediction_name(r["key"])) for r in chosen]
        return jobs, m.root.resolve(), protected
    if src.is_dir():
        files = find_images(src)
        if not files:
            raise ValueError(f"{src}: no images found (extensions .png, .jpg, ...)")
        jobs = [Job(p, p.relative_to(src).as_posix(), p.relative_to(src).with_suffix(".png").as_posix())
                for p in files]
        return jobs, src.resolve(), {p.resolve() for p in files}
    return [Job(src, src.name, src.with_suffix(".png").name)], src.parent.resolve(), {src.resolve()}


def check_output(out_dir: Path, input_root: Path, jobs: list[Job], protected: set[Path], manifest: bool) -> None:
    """Refuse outputs that could overwrite or mix with inputs."""
    out = out_dir.resolve()
    inside = out == input_root or (not manifest and input_root in out.parents)
    if inside:
        raise ValueError(f"--output {out_dir} is (inside) the input folder {input_root} — choose another folder; "
                         "inputs are never overwritten")
    for job in jobs:
        if (out / job.name).resolve() in protected:
            raise ValueError(f"--output {out_dir}: {job.name} would overwrite the input {out / job.name} — "
                             "choose another folder")


# --------------------------------------------------------------------------------------- CLI


def add_model_arguments(parser: argparse.ArgumentParser, checkpoint_required: bool) -> None:
    """Checkpoint + sampling options, shared by ``infer`` and ``evaluate``."""
    from deblurdiff.sampling import DEFAULT_STEPS, SPACINGS

    g = parser.add_argument_group("model and sampling")
    g.add_argument("--checkpoint", required=checkpoint_required, metavar="DIR|FILE",
                   help="checkpoint folder written by deblurdiff train (DeblurDiff or MSGD: the folder says "
                        "which) / deblurdiff convert, or the released "
                        "model.pth of github.com/kkkls/DeblurDiff (converted in memory; 'deblurdiff convert' saves "
                        "the result)")
    g.add_argument("--pretrained", metavar="SD_DIR",
                   help="local diffusers folder of Stable Diffusion (overrides the path recorded in the checkpoint)")
    g.add_argument("--sampler", choices=["ddpm", "ddim", "dpmsolver"], default=None,
                   help="ddpm: the paper's Algorithm 1 (DeblurDiff default); ddim / dpmsolver: fast 10–20-step "
                        "variants; MSGD checkpoints default to their preset's sampler")
    g.add_argument("--steps", type=_positive_int, default=None,
                   help="denoising steps (default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items())
                        + "; MSGD: its preset's)")
    g.add_argument("--samples", type=_positive_int, default=1,
                   help="MSGD only: average this many samples per image (the paper's SA: higher PSNR, less "
                        "perceptual detail)")
    g.add_argument("--timestep-spacing", choices=list(SPACINGS), default=None,
                   help="which of the 1000 training timesteps the sampler visits: linspace (999, 979, ..., 0; the "
                        "released code, default for converted checkpoints), leading (981, 961, ..., 1; SD's "
                        "scheduler), trailing; default: the checkpoint's setting")
    g.add_argument("--seed", type=int, default=0, help="run seed; each image's noise derives from (seed, key)")
    g.add_argument("--tile-size", type=int, default=512,
                   help="pixels; larger images are processed in Gaussian-blended tiles (0 = never tile)")
    g.add_argument("--tile-overlap", type=int, default=128, help="overlap of neighbouring tiles, pixels")
    g.add_argument("--color-fix", choices=list(COLOR_FIXES), default=None,
                   help="adain: match per-channel mean/std (RGB) to the input (DeblurDiff default); wavelet: keep "
                        "the input's low frequencies; none (MSGD default)")
    g.add_argument("--dtype", choices=list(DTYPE_NAMES), default="fp32",
                   help="inference precision (bf16 / fp16 are meant for CUDA; on CPU they are slow)")
    g.add_argument("--batch-size", type=_positive_int, default=1, help="images of the same size per batch")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if available")
    g.add_argument("--bit-depth", type=int, choices=[8, 16], default=8, help="PNG bit depth of the outputs")
    g.add_argument("--quiet", action="store_true", help="no progress bars")


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="an image, a folder of images (recursive), or a blurforge manifest "
                             "(its --split rows' blurry images are deblurred)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output folder (never the input folder)")
    parser.add_argument("--split", default="test", help="manifest split to deblur (train/val/test/all)")
    parser.add_argument("--save-intermediates", action="store_true",
                        help="write the decoded z_s and x0 estimates of every step to "
                             "OUTPUT/intermediates/NAME/step-XXX_{zs,z0}.png; MSGD: the guidance outputs per "
                             "scale (guidance-sS.png) and the x0 estimate of every step (step-XXX_x0.png)")
    add_model_arguments(parser, checkpoint_required=True)


def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return v


def settings_from_args(args: argparse.Namespace, model=None) -> InferSettings:
    """Settings from the CLI; options left unset take the model family's defaults (DeblurDiff:
    ddpm, adain; MSGD: its config's sampler and steps, no colour fix)."""
    defaults = {"sampler": "ddpm", "steps": None, "color_fix": "adain"}
    if getattr(model, "family", None) == "msgd":
        defaults = {"sampler": model.config.sampler, "steps": model.config.sampling_steps, "color_fix": "none"}
    return InferSettings(
        sampler=args.sampler or defaults["sampler"],
        steps=args.steps if args.steps is not None else defaults["steps"],
        seed=args.seed,
        tile_size=args.tile_size or None,
        tile_overlap=args.tile_overlap,
        color_fix=args.color_fix or defaults["color_fix"],
        samples=getattr(args, "samples", 1),
        timestep_spacing=args.timestep_spacing,
    )


def make_deblurrer(model, settings: InferSettings, progress: bool = False):
    """The inference pipeline of the model's family: :class:`Deblurrer` or MSGD's."""
    if getattr(model, "family", None) == "msgd":
        from deblurdiff.msgd_infer import MSGDDeblurrer

        return MSGDDeblurrer(model, settings, progress)
    return Deblurrer(model, settings, progress)


def load_model(args: argparse.Namespace):
    """(model on device/dtype, device, dtype name actually used) from the CLI options."""
    from deblurdiff.model import DeblurDiff

    device = resolve_device(args.device)
    dtype, note = resolve_dtype(args.dtype, device)
    if note:
        print(f"deblurdiff: {note}", file=sys.stderr)
    from deblurdiff.msgd import MSGD, is_msgd_checkpoint

    if is_msgd_checkpoint(args.checkpoint):  # the MSGD family: one network, no pretrained parts
        if args.pretrained:
            raise ValueError(f"--pretrained: {args.checkpoint} is an MSGD checkpoint, which has no pretrained "
                             "parts — drop --pretrained")
        model = MSGD.from_pretrained(args.checkpoint).to(device=device, dtype=dtype).eval()
        return model, device, str(dtype).replace("torch.", "")
    from deblurdiff.convert import is_checkpoint_file, load_released

    if is_checkpoint_file(args.checkpoint):
        if args.pretrained:
            raise ValueError(f"--pretrained does not apply to {args.checkpoint}: the released file holds its own "
                             "Stable Diffusion weights — drop --pretrained")
        print(f"deblurdiff: converting {args.checkpoint} in memory (save it once with 'deblurdiff convert "
              f"--checkpoint {args.checkpoint} --output DIR' to skip this)", file=sys.stderr)
        model, _ = load_released(args.checkpoint)
    else:
        model = DeblurDiff.from_pretrained(args.checkpoint, pretrained=args.pretrained)
    return prepare_model(model, device, dtype), device, str(dtype).replace("torch.", "")


def run_infer(args: argparse.Namespace) -> int:
    """Deblur every input; 0 if all succeeded, 1 if some failed (reported, others written).
    Raises ValueError / FileNotFoundError for unusable arguments."""
    from tqdm import tqdm

    from blurforge.imageio import ImageReadError, encode_image, read_image, write_bytes_atomic

    t0 = time.perf_counter()
    src = Path(args.input)
    jobs, input_root, protected = collect_jobs(args.input, args.split)
    out_dir = Path(args.output)
    check_output(out_dir, input_root, jobs, protected, manifest=is_manifest(src))
    names = {}
    model, device, dtype_name = load_model(args)
    settings = settings_from_args(args, model)
    t_loaded = time.perf_counter()
    deblur = make_deblurrer(model, settings, progress=not args.quiet)
    failures: list[dict] = []
    done = 0
    bar = tqdm(total=len(jobs), desc="infer", unit="img", disable=args.quiet)
    for start in range(0, len(jobs), args.batch_size):
        loaded: list[tuple[Job, np.ndarray]] = []
        for job in jobs[start:start + args.batch_size]:
            if job.name in names:
                failures.append({"input": str(job.path), "error": f"output name {job.name} also used by "
                                 f"{names[job.name]} — rename one of them"})
                continue
            names[job.name] = str(job.path)
            try:
                loaded.append((job, read_image(job.path)[0]))
            except ImageReadError as exc:
                failures.append({"input": str(job.path), "error": str(exc)})
                tqdm.write(f"infer: skipped {exc}", file=sys.stderr)
        groups: dict[tuple, list] = {}
        for job, img in loaded:
            groups.setdefault(img.shape, []).append((job, img))
        for group in groups.values():
            batch_jobs = [j for j, _ in group]
            inter = None
            if args.save_intermediates:
                inter = [out_dir / "intermediates" / Path(j.name).with_suffix("") for j in batch_jobs]
            outs = deblur([im for _, im in group], [j.key for j in batch_jobs], inter)
            for job, img in zip(batch_jobs, outs):
                write_bytes_atomic(out_dir / job.name, encode_image(img, bit_depth=args.bit_depth))
                done += 1
        bar.update(len(jobs[start:start + args.batch_size]))
    bar.close()
    seconds = time.perf_counter() - t0
    record = {
        "input": str(src),
        "checkpoint": str(args.checkpoint),
        "settings": asdict(settings) | {"steps": settings.n_steps(),
                                        "timestep_spacing": settings.timestep_spacing
                                        or getattr(model.config, "timestep_spacing", None) or "scheduler default"},
        "device": str(device),
        "dtype": dtype_name,
        "batch_size": args.batch_size,
        "images": done,
        "failures": failures,
        "seconds": round(seconds, 3),
        "seconds_loading_model": round(t_loaded - t0, 3),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    from blurforge.manifest import write_text_atomic

    write_text_atomic(out_dir / "infer.json", json.dumps(record, indent=2) + "\n")
    per = (time.perf_counter() - t_loaded) / max(done, 1)  # excludes loading the model
    print(f"infer: {done} images, {len(failures)} failures, {per:.2f} s/image "
          f"({settings.sampler}-{settings.n_steps()}, seed {settings.seed}, {dtype_name} on {device}) -> {out_dir}"
          + (f" (failures listed in {out_dir / 'infer.json'})" if failures else ""))
    return 1 if failures else 0
