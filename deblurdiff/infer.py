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

Outputs (decided before any work, :func:`plan_outputs`): ``OUTPUT/<relative path>.png`` (folder
input; inputs sharing a stem keep their extension, :func:`output_names`), ``OUTPUT/<stem>.png`` or
the ``.png`` file ``--output`` names (file input), ``OUTPUT/<prediction_name(key)>`` (manifest
input, what ``deblurdiff evaluate`` looks for), at the input's bit depth unless ``--bit-depth``;
plus ``infer.json`` (settings, counts, output names, failures). Inputs are never overwritten, and
a folder input's outputs must lie outside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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
    import numpy as np
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
    """One image to deblur: its input file, its seed key and its output path relative to the output folder."""

    path: Path
    key: str
    name: str


@dataclass
class Plan:
    """What a run reads and writes, decided before any work."""

    jobs: list[Job]
    kind: str  # "file" | "folder" | "manifest"
    out_dir: Path  # the outputs' folder, as given (for a file output: its parent)
    record: Path  # infer.json (for a file output: STEM.infer.json beside it)
    renamed: list[tuple[str, str]]  # (input, output name) of inputs that kept their extension (shared stems)


def is_manifest(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".parquet"
    return path.is_dir() and ((path / "manifest").is_dir() or any(path.glob("*.parquet")))


def output_names(relative: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Output names of a folder's inputs (POSIX paths relative to it): ``a/x.jpg -> a/x.png``.
    Inputs that would share an output name — ``x.jpg`` and ``x.png``; names are compared
    case-insensitively, as some file systems do — keep their extension instead: ``x.jpg.png``,
    ``x.png.png``; any clash left after that adds 8 hex digits of the input path's SHA-256.
    Returns (names, [(input, name) of those renamed])."""
    plain = [str(PurePosixPath(r).with_suffix(".png")) for r in relative]
    names = _rename_clashes(plain, [f"{r}.png" for r in relative])
    names = _rename_clashes(names, [f"{n[:-4]}-{hashlib.sha256(r.encode()).hexdigest()[:8]}.png"
                                    for n, r in zip(names, relative)])
    return names, [(r, n) for r, p, n in zip(relative, plain, names) if n != p]


def _rename_clashes(names: list[str], alternatives: list[str]) -> list[str]:
    counts = Counter(n.casefold() for n in names)
    return [alt if counts[n.casefold()] > 1 else n for n, alt in zip(names, alternatives)]


def collect_jobs(input_path: str, split: str) -> tuple[list[Job], str, Path, set[Path], list[tuple[str, str]]]:
    """(jobs, kind, the input folder, every input file path (protected), renamed outputs)."""
    from blurforge.imageio import find_images

    src = Path(input_path)
    if not src.exists():
        raise FileNotFoundError(f"--input {src}: no such file or folder — pass an image, a folder of images or a "
                                "blurforge manifest")
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
        return jobs, "manifest", m.root.resolve(), protected, []
    if src.is_dir():
        files = find_images(src)
        if not files:
            raise ValueError(f"--input {src}: no images found (files ending in .png, .jpg, .jpeg, .bmp, .tif, "
                             ".tiff or .webp, searched recursively)")
        relative = [p.relative_to(src).as_posix() for p in files]
        names, renamed = output_names(relative)
        jobs = [Job(p, r, n) for p, r, n in zip(files, relative, names)]
        return jobs, "folder", src.resolve(), {p.resolve() for p in files}, renamed
    return [Job(src, src.name, src.with_suffix(".png").name)], "file", src.parent.resolve(), {src.resolve()}, []


def plan_outputs(input_path: str, output: str, split: str = "test") -> Plan:
    """The jobs and where their outputs go, refusing outputs that could overwrite or mix with inputs:

    - ``--output`` ending in an image extension (and not an existing folder) is the output file of
      a single input image; it must end in ``.png``. Anything else is a folder.
    - A folder input's output folder must lie outside it (a re-run would read the outputs as new
      inputs); a file's may be anywhere, its own folder and the current one included.
    - No output may replace an input file.
    """
    from blurforge.imageio import IMAGE_EXTENSIONS

    jobs, kind, input_root, protected, renamed = collect_jobs(input_path, split)
    out = Path(output)
    if out.suffix.lower() in IMAGE_EXTENSIONS and not out.is_dir():
        if kind != "file":
            raise ValueError(f"--output {output} names an image file, but --input {input_path} holds "
                             f"{len(jobs)} image(s) — pass a folder, e.g. --output {out.with_suffix('')}")
        if out.suffix.lower() != ".png":
            raise ValueError(f"--output {output}: outputs are PNG files (lossless, 8 or 16 bit) — name it "
                             f"{out.with_suffix('.png')}")
        jobs[0].name = out.name
        plan = Plan(jobs, kind, out.parent, out.parent / f"{out.stem}.infer.json", renamed)
    else:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--output {output} exists and is not a folder — pass a folder, or a .png file name "
                             "for a single input image")
        resolved = out.resolve()
        if kind == "folder" and (resolved == input_root or input_root in resolved.parents):
            raise ValueError(f"--output {output} is inside the input folder {input_path} — choose a folder outside "
                             "it (a later run over the folder would take the outputs for inputs); inputs are never "
                             "overwritten")
        if kind == "manifest" and resolved == input_root:
            raise ValueError(f"--output {output} is the manifest's folder — choose another folder")
        plan = Plan(jobs, kind, out, out / "infer.json", renamed)
    for job in jobs:
        target = plan.out_dir / job.name
        if target.resolve() in protected:
            stem = Path(job.name).stem
            raise ValueError(f"--output {output} would overwrite the input {job.path} — choose another folder"
                             + (f", or a file name such as --output {stem}-deblurred.png" if kind == "file" else ""))
    return plan


# --------------------------------------------------------------------------------------- CLI

INFER_DESCRIPTION = (
    "Deblur one image, a folder of images (searched recursively) or the blurry images of a manifest split "
    "with a checkpoint of 'deblurdiff train' (RUN/final, or a RUN/checkpoint-STEP folder), a folder written "
    "by 'deblurdiff convert', or the released model.pth. Outputs are PNG files at the input's bit depth "
    "(16-bit inputs give 16-bit outputs; --bit-depth overrides) of the input's size, plus infer.json (settings, "
    "counts, failed inputs). Inputs are never overwritten. Each image's noise derives from (--seed, its "
    "name), so its result does not depend on the other images of the run. Unreadable images are skipped, "
    "listed in infer.json and named at the end."
)
INFER_EXAMPLES = """\
examples:
  deblurdiff infer --checkpoint run/final --input photo.jpg --output photo-sharp.png
  deblurdiff infer --checkpoint run/final --input blurry/ --output deblurred/ --sampler ddim --steps 20
  deblurdiff infer --checkpoint run/final --input manifest.parquet --split test --output deblurred/

output names: one image: --output FILE.png, or FOLDER/STEM.png (FILE.infer.json / FOLDER/infer.json
beside it). A folder keeps its layout (blurry/a/x.jpg -> deblurred/a/x.png); inputs that would share
an output name (x.jpg and x.png) keep their extension in it (x.jpg.png, x.png.png), as said at the
start. A manifest's rows are named by key, as 'deblurdiff evaluate --predictions' expects.
"""


def add_model_arguments(parser: argparse.ArgumentParser, checkpoint_required: bool) -> None:
    """Checkpoint + sampling options, shared by ``infer`` and ``evaluate``."""
    from deblurdiff.choices import DEFAULT_STEPS, SAMPLERS, TIMESTEP_SPACINGS

    g = parser.add_argument_group("model and sampling")
    g.add_argument("--checkpoint", required=checkpoint_required, metavar="DIR|FILE",
                   help="RUN/final (or RUN/checkpoint-STEP) of 'deblurdiff train', DeblurDiff or MSGD: the "
                        "folder says which; a folder written by 'deblurdiff convert'; or the released model.pth "
                        "of github.com/kkkls/DeblurDiff (converted in memory; 'deblurdiff convert' saves the "
                        "result)")
    g.add_argument("--pretrained", metavar="SD_DIR",
                   help="local diffusers folder of Stable Diffusion, instead of the path recorded in the checkpoint")
    g.add_argument("--sampler", choices=SAMPLERS, default=None,
                   help="ddpm: the paper's Algorithm 1; ddim / dpmsolver: fast 10-20-step variants (default: ddpm "
                        "for DeblurDiff, the preset's for MSGD)")
    g.add_argument("--steps", type=_positive_int, default=None, metavar="N",
                   help="denoising steps (default: " + ", ".join(f"{k} {v}" for k, v in DEFAULT_STEPS.items())
                        + "; MSGD: its preset's)")
    g.add_argument("--samples", type=_positive_int, default=1, metavar="N",
                   help="MSGD only: average this many samples per image (the paper's SA: higher PSNR, less "
                        "perceptual detail)")
    g.add_argument("--timestep-spacing", choices=TIMESTEP_SPACINGS, default=None,
                   help="which of the 1000 training timesteps the sampler visits: linspace (999, 979, ..., 0; the "
                        "released code), leading (981, 961, ..., 1; SD's scheduler), trailing (default: the "
                        "checkpoint's setting: linspace for converted checkpoints, leading otherwise)")
    g.add_argument("--seed", type=int, default=0, metavar="S",
                   help="run seed; each image's noise derives from (seed, its name)")
    g.add_argument("--tile-size", type=int, default=512, metavar="PX",
                   help="images larger than this are processed in Gaussian-blended tiles of this size; 0 = never tile")
    g.add_argument("--tile-overlap", type=int, default=128, metavar="PX", help="overlap of neighbouring tiles")
    g.add_argument("--color-fix", choices=COLOR_FIXES, default=None,
                   help="adain: match per-channel mean/std (RGB) to the input; wavelet: keep the input's low "
                        "frequencies; none (default: adain for DeblurDiff, none for MSGD)")
    g.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32",
                   help="inference precision (bf16 / fp16 are meant for CUDA; on CPU they are slow)")
    g.add_argument("--batch-size", type=_positive_int, default=1, metavar="N", help="images of the same size per batch")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: cuda if available")
    g.add_argument("--bit-depth", type=int, choices=[8, 16], default=None,
                   help="PNG bit depth of the outputs (default: the input's: 16 for 16-bit inputs, else 8)")
    g.add_argument("--quiet", action="store_true", help="no progress bars (the summary is still printed)")


def add_infer_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="an image, a folder of images (searched recursively), or a blurforge manifest (the "
                             "blurry images of its --split rows)")
    parser.add_argument("--output", required=True, metavar="DIR|FILE.png",
                        help="output folder (outside a folder --input), or the .png file to write for one input "
                             "image")
    parser.add_argument("--split", default="test", help="manifest split to deblur: train, val, test or all")
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


def resolve_checkpoint(text: str) -> str:
    """The checkpoint ``--checkpoint`` names: a model folder (``deblurdiff.json`` or ``msgd.json``),
    a training checkpoint ``RUN/checkpoint-STEP`` (its ``model/``) or a weights file; anything
    else is refused with what to pass instead."""
    from deblurdiff.convert import FILE_SUFFIXES
    from deblurdiff.model import CONFIG_NAME
    from deblurdiff.msgd import CONFIG_NAME as MSGD_CONFIG_NAME

    what = ("pass RUN/final (or RUN/checkpoint-STEP) of 'deblurdiff train', a folder written by 'deblurdiff "
            "convert', or the released model.pth")
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {text}: no such file or folder — {what}")
    if path.is_file():
        if path.suffix not in FILE_SUFFIXES:
            raise ValueError(f"--checkpoint {text}: not a weights file ({', '.join(FILE_SUFFIXES)}) — {what}")
        return text
    holds = lambda d: (d / CONFIG_NAME).is_file() or (d / MSGD_CONFIG_NAME).is_file()  # noqa: E731
    if holds(path):
        return text
    if holds(path / "model"):  # a training checkpoint: its weights are in model/
        return str(path / "model")
    if holds(path / "final"):
        raise FileNotFoundError(f"--checkpoint {text} is a training run's folder — pass {path / 'final'} (its "
                                "final weights) or one of its checkpoint-STEP folders")
    raise FileNotFoundError(f"--checkpoint {text}: no {CONFIG_NAME} or {MSGD_CONFIG_NAME} in this folder — {what}")


def load_model(args: argparse.Namespace):
    """(model on device/dtype, device, dtype name actually used) from the CLI options."""
    from deblurdiff.model import DeblurDiff

    checkpoint = resolve_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    dtype, note = resolve_dtype(args.dtype, device)
    if note:
        print(f"deblurdiff: {note}", file=sys.stderr)
    from deblurdiff.msgd import MSGD, is_msgd_checkpoint

    if is_msgd_checkpoint(checkpoint):  # the MSGD family: one network, no pretrained parts
        if args.pretrained:
            raise ValueError(f"--pretrained: {args.checkpoint} is an MSGD checkpoint, which has no pretrained "
                             "parts — drop --pretrained")
        model = MSGD.from_pretrained(checkpoint).to(device=device, dtype=dtype).eval()
        return model, device, str(dtype).replace("torch.", "")
    from deblurdiff.convert import is_checkpoint_file, load_released

    if is_checkpoint_file(checkpoint):
        if args.pretrained:
            raise ValueError(f"--pretrained does not apply to {args.checkpoint}: the released file holds its own "
                             "Stable Diffusion weights — drop --pretrained")
        print(f"deblurdiff: converting {args.checkpoint} in memory (save it once with 'deblurdiff convert "
              f"--checkpoint {args.checkpoint} --output DIR' to skip this)", file=sys.stderr)
        model, _ = load_released(checkpoint)
    else:
        model = DeblurDiff.from_pretrained(checkpoint, pretrained=args.pretrained)
    return prepare_model(model, device, dtype), device, str(dtype).replace("torch.", "")


def _failure_lines(failures: list[dict], limit: int = 5) -> list[str]:
    lines = [f"  {f['error']}" for f in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit} more")
    return lines


def run_infer(args: argparse.Namespace) -> int:
    """Deblur every input. 0 when it finished (inputs that could not be read are skipped, listed in
    infer.json and named), 1 if no image was deblurred; unusable arguments raise ValueError /
    FileNotFoundError before any work."""
    from tqdm import tqdm

    from blurforge.imageio import ImageReadError, encode_image, read_image, write_bytes_atomic
    from blurforge.manifest import write_text_atomic

    t0 = time.perf_counter()
    plan = plan_outputs(args.input, args.output, args.split)
    resolve_checkpoint(args.checkpoint)  # a wrong --checkpoint is refused before the model loads
    for source, name in plan.renamed:
        print(f"infer: {source} -> {name} (another input has the same stem; outputs keep the extension)",
              file=sys.stderr)
    model, device, dtype_name = load_model(args)
    settings = settings_from_args(args, model)
    t_loaded = time.perf_counter()
    # the per-step bars of the samplers only on a terminal: in a log file their redraws are noise
    deblur = make_deblurrer(model, settings, progress=not args.quiet and sys.stderr.isatty())
    jobs, out_dir = plan.jobs, plan.out_dir
    failures: list[dict] = []
    done = 0
    bar = tqdm(total=len(jobs), desc="infer", unit="img", disable=args.quiet)
    for start in range(0, len(jobs), args.batch_size):
        loaded: list[tuple[Job, np.ndarray, int]] = []
        for job in jobs[start:start + args.batch_size]:
            try:
                img, info = read_image(job.path)
                loaded.append((job, img, info["bit_depth"]))
            except ImageReadError as exc:
                failures.append({"input": str(job.path), "error": str(exc)})
                tqdm.write(f"infer: skipped {exc}", file=sys.stderr)
        groups: dict[tuple, list] = {}
        for job, img, depth in loaded:
            groups.setdefault(img.shape, []).append((job, img, depth))
        for group in groups.values():
            batch_jobs = [j for j, _, _ in group]
            inter = None
            if args.save_intermediates:
                inter = [out_dir / "intermediates" / Path(j.name).with_suffix("") for j in batch_jobs]
            outs = deblur([im for _, im, _ in group], [j.key for j in batch_jobs], inter)
            for (job, _, depth), img in zip(group, outs):
                bits = args.bit_depth or (16 if depth == 16 else 8)
                write_bytes_atomic(out_dir / job.name, encode_image(img, bit_depth=bits))
                done += 1
        bar.update(len(jobs[start:start + args.batch_size]))
    bar.close()
    seconds = time.perf_counter() - t0
    record = {
        "input": str(args.input),
        "checkpoint": str(args.checkpoint),
        "settings": asdict(settings) | {"steps": settings.n_steps(),
                                        "timestep_spacing": settings.timestep_spacing
                                        or getattr(model.config, "timestep_spacing", None) or "scheduler default"},
        "device": str(device),
        "dtype": dtype_name,
        "batch_size": args.batch_size,
        "bit_depth": args.bit_depth or "input's",
        "images": done,
        "outputs": {str(j.path): j.name for j in jobs if all(f["input"] != str(j.path) for f in failures)},
        "failures": failures,
        "seconds": round(seconds, 3),
        "seconds_loading_model": round(t_loaded - t0, 3),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(plan.record, json.dumps(record, indent=2) + "\n")
    per = (time.perf_counter() - t_loaded) / max(done, 1)  # excludes loading the model
    where = out_dir / jobs[0].name if plan.kind == "file" else out_dir
    failed = f", {len(failures)} failed (listed in {plan.record})" if failures else ""
    print(f"infer: {done} of {len(jobs)} image(s) deblurred{failed}, {per:.2f} s/image ({settings.sampler}-"
          f"{settings.n_steps()}, seed {settings.seed}, {dtype_name} on {device}) -> {where}")
    if failures:
        print(f"infer: {len(failures)} input(s) could not be read:", file=sys.stderr)
        print("\n".join(_failure_lines(failures)), file=sys.stderr)
    if done == 0:
        print("infer: no image was deblurred — every input failed (reasons above)", file=sys.stderr)
        return 1
    return 0
