"""Segmenters: the classical backend, the SAM 2 adapter (with a fake generator), its error
messages, and one real run of SAM 2's code path (random weights, CPU, stand-in torchvision)."""

from __future__ import annotations

import sys
import textwrap
import types

import numpy as np
import pytest

import blurforge.segment as segment_module
from blurforge.segment import (
    ClassicalFallbackWarning,
    ClassicalSegmenter,
    Sam2Segmenter,
    Sam2Unavailable,
    build_sam2_generator,
    import_sam2,
    make_segmenter,
    object_regions,
    segment,
    working_size,
)
from conftest import photo


def discs_image(h=120, w=160):
    """Grey background with a red and a green disc; returns the image and the two true masks."""
    img = np.full((h, w, 3), 0.2, np.float32)
    yy, xx = np.mgrid[:h, :w]
    red = (yy - 40) ** 2 + (xx - 50) ** 2 < 20**2
    green = (yy - 80) ** 2 + (xx - 110) ** 2 < 25**2
    img[red] = [0.9, 0.1, 0.1]
    img[green] = [0.1, 0.8, 0.2]
    return img, green, red  # green is larger


def iou(a, b):
    return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


# ----------------------------------------------------------------------------------- classical


def test_classical_finds_the_objects_of_a_simple_scene():
    img, green, red = discs_image()
    masks = ClassicalSegmenter().segment(img)
    assert len(masks) == 2
    assert iou(masks[0], green) > 0.9 and iou(masks[1], red) > 0.9  # largest first


def test_background_is_the_region_on_the_border_not_the_largest():
    """A large subject in the middle of a frame-filling background: the subject is the object."""
    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), 0.15, np.float32)
    subject = (yy - 60) ** 2 / 50**2 + (xx - 80) ** 2 / 68**2 < 1  # 56% of the image
    img[subject] = [0.85, 0.7, 0.2]
    assert subject.mean() > 0.5
    masks = ClassicalSegmenter().segment(img)
    assert len(masks) == 1 and iou(masks[0], subject) > 0.9


def test_strips_and_corners_along_the_frame_are_not_objects():
    """A band along the top edge and a corner wedge join the background; the disc is the object."""
    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    img = np.full((h, w, 3), 0.5, np.float32)
    img[:12] = [0.1, 0.2, 0.9]  # strip along the top edge
    img[xx + yy < 30] = [0.9, 0.9, 0.1]  # corner wedge (top left)
    img[yy > w - xx + 100] = [0.9, 0.1, 0.6]  # corner wedge (bottom right)
    disc = (yy - 70) ** 2 + (xx - 90) ** 2 < 22**2
    img[disc] = [0.1, 0.8, 0.2]
    masks = ClassicalSegmenter().segment(img)
    assert len(masks) == 1 and iou(masks[0], disc) > 0.9


def test_object_regions_rules_on_a_label_map():
    """The rules on hand-made regions (share of outline on the border, thickness)."""
    h, w = 100, 100
    labels = np.zeros((h, w), np.int32)  # 0: background (most border pixels)
    labels[0:6, 20:80] = 1  # strip on the top edge: share ~0.5, thickness 0.06 -> background
    labels[60:100, 30:70] = 2  # block cut by the bottom edge: share ~0.3, thickness ~0.4 -> object
    labels[30:50, 40:60] = 3  # interior square -> object
    labels[20:60, 5:7] = 4  # interior sliver, 2 px wide -> background
    labels[20:24, 80:100] = 5  # short stub on the right edge: share ~0.2, thickness ~0.06 -> object
    assert object_regions(labels) == [2, 3, 5]
    only_frame = np.zeros((h, w), np.int32)
    only_frame[:, 50:] = 1  # half the frame each: the tie goes to the larger, then the lower label
    assert object_regions(only_frame) == []  # the other half hugs the frame


def test_classical_says_it_is_a_fallback_once_per_process(monkeypatch):
    monkeypatch.setattr(segment_module, "_warned_fallback", False)
    with pytest.warns(ClassicalFallbackWarning, match="fallback for SAM 2") as record:
        ClassicalSegmenter()
        make_segmenter("classical")
    assert len([r for r in record if r.category is ClassicalFallbackWarning]) == 1
    d = ClassicalSegmenter().describe(90, 120)
    assert d["fallback_for"] == "sam2" and "fallback for SAM 2" in d["note"]


@pytest.mark.parametrize("name", ["astronaut", "coffee", "rocket"])
@pytest.mark.parametrize("max_objects", [0, 1, 4])
def test_classical_masks_on_photos(name, max_objects):
    img = photo(name, (200, 150)).astype(np.float32) / 255
    seg = ClassicalSegmenter(max_objects=max_objects)
    masks = seg.segment(img)
    assert len(masks) <= max_objects
    assert all(m.dtype == bool and m.shape == (150, 200) for m in masks)
    areas = [int(m.sum()) for m in masks]
    assert areas == sorted(areas, reverse=True)
    assert all(a >= 0.005 * 150 * 200 for a in areas)
    assert all(a < 150 * 200 for a in areas)  # the background is never an object
    again = seg.segment(img)  # deterministic
    assert len(again) == len(masks) and all(np.array_equal(a, b) for a, b in zip(masks, again))
    if max_objects == 4:
        assert len(masks) >= 2  # a photograph has some objects


def test_classical_flat_image_has_no_objects():
    assert ClassicalSegmenter().segment(np.full((90, 120, 3), 0.4, np.float32)) == []


def test_segmentation_runs_at_reduced_resolution_and_says_so():
    img = photo("chelsea", (640, 480)).astype(np.float32) / 255
    seg = ClassicalSegmenter(max_side=128)
    masks = seg.segment(img)
    assert all(m.shape == (480, 640) for m in masks)
    assert seg.describe(480, 640)["resolution"] == [128, 96]
    assert working_size(480, 640, 1024) == (480, 640)  # never enlarged


def test_common_interface():
    img, green, _ = discs_image()
    assert iou(segment(img, np.random.default_rng(0), segmenter="classical")[0], green) > 0.9
    with pytest.raises(ValueError, match="--segmenter must be one of"):
        make_segmenter("watershed")


# ------------------------------------------------------------------------------ SAM 2 adapter


class FakeGenerator:
    """Stands in for SAM2AutomaticMaskGenerator: records its input, returns given records."""

    def __init__(self, make_records):
        self.make_records = make_records
        self.seen = []

    def generate(self, image):
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        self.seen.append(image.shape)
        return self.make_records(*image.shape[:2])


def record(mask, iou_pred=0.9, stability=0.96):
    return {"segmentation": mask, "area": int(mask.sum()), "predicted_iou": iou_pred,
            "stability_score": stability, "bbox": [0, 0, 1, 1], "point_coords": [[0, 0]],
            "crop_box": [0, 0, mask.shape[1], mask.shape[0]]}


def box(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_sam2_adapter_filters_sorts_and_caps():
    def records(h, w):
        return [
            record(box(h, w, 0, 10, 0, 10)),  # 100 px
            record(box(h, w, 0, 1, 0, 2)),  # 2 px: below min_area
            record(box(h, w, 20, 60, 20, 60)),  # 1600 px, the largest
            record(box(h, w, 20, 60, 20, 59), iou_pred=0.5),  # a near-duplicate of the largest
            record(box(h, w, 70, 90, 0, 30)),  # 600 px
            record(box(h, w, 70, 90, 40, 70)),  # 600 px, tie: higher predicted IoU goes first
            record(box(h, w, 70, 90, 80, 110), iou_pred=0.95),
        ]

    fake = FakeGenerator(records)
    seg = Sam2Segmenter(generator=fake, max_objects=4, min_area=0.001)
    masks = seg.segment(np.zeros((100, 120, 3), np.float32))
    assert fake.seen == [(100, 120, 3)]
    assert [int(m.sum()) for m in masks] == [1600, 600, 600, 600]
    assert np.array_equal(masks[1], box(100, 120, 70, 90, 80, 110))  # the tie with the best IoU
    assert np.array_equal(masks[2], box(100, 120, 70, 90, 0, 30))  # then SAM 2's order
    seg.max_objects = 10
    assert [int(m.sum()) for m in seg.segment(np.zeros((100, 120, 3), np.float32))] == [1600, 600, 600, 600, 100]


def test_sam2_adapter_works_at_reduced_resolution():
    fake = FakeGenerator(lambda h, w: [record(box(h, w, h // 4, 3 * h // 4, w // 4, 3 * w // 4))])
    seg = Sam2Segmenter(generator=fake, max_side=100)
    masks = seg.segment(np.zeros((300, 400, 3), np.float32))
    assert fake.seen == [(75, 100, 3)]
    assert len(masks) == 1 and masks[0].shape == (300, 400)
    assert iou(masks[0], box(300, 400, 75, 225, 100, 300)) > 0.97
    d = seg.describe(300, 400)
    assert d["name"] == "sam2" and d["resolution"] == [100, 75]


def test_sam2_adapter_rejects_non_binary_output():
    fake = FakeGenerator(lambda h, w: [{"segmentation": {"size": [h, w], "counts": "x"}, "area": 1}])
    with pytest.raises(ValueError, match="output_mode='binary_mask'"):
        Sam2Segmenter(generator=fake).segment(np.zeros((40, 40, 3), np.float32))


def test_sam2_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="--sam2-checkpoint PATH"):
        Sam2Segmenter(checkpoint=None)
    with pytest.raises(FileNotFoundError, match=r"nope\.pt: no such file.*nothing is downloaded"):
        make_segmenter("sam2", sam2_checkpoint=str(tmp_path / "nope.pt"))


def test_sam2_not_installed_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "sam2", None)  # makes 'import sam2' raise ImportError
    with pytest.raises(Sam2Unavailable, match=r"pip install .*sam2==1\.1\.0.*--segmenter classical"):
        import_sam2()


def test_sam2_without_torchvision_names_the_fix(monkeypatch, tmp_path):
    # A stand-in 'sam2' package whose mask generator imports torchvision, as the real one does.
    pkg = tmp_path / "sam2"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "build_sam.py").write_text("def build_sam2(*a, **k):\n    raise AssertionError\n")
    (pkg / "automatic_mask_generator.py").write_text(
        "from torchvision.ops.boxes import batched_nms, box_area\nclass SAM2AutomaticMaskGenerator: pass\n")
    for name in [m for m in sys.modules if m == "sam2" or m.startswith("sam2.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(Sam2Unavailable, match=r"torchvision is missing or broken.*batched_nms.*CUDA-linked"):
            import_sam2()
    finally:
        for name in [m for m in sys.modules if m == "sam2" or m.startswith("sam2.")]:
            del sys.modules[name]


# --------------------------------------------------------------------- SAM 2 for real (CPU)

STANDIN_TORCHVISION = textwrap.dedent('''
    """A minimal pure-torch stand-in for the torchvision pieces sam2 1.1.0 imports (tests only)."""
    import torch
    import torch.nn.functional as F


    def box_area(boxes):
        return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


    def box_iou(a, b):
        lt = torch.maximum(a[:, None, :2], b[None, :, :2])
        rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
        inter = (rb - lt).clamp(min=0).prod(-1)
        return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


    def nms(boxes, scores, iou_threshold):
        order = torch.argsort(scores, descending=True)
        keep = []
        while order.numel():
            i = order[0]
            keep.append(i)
            rest = order[1:]
            order = rest[box_iou(boxes[i : i + 1], boxes[rest])[0] <= iou_threshold]
        return torch.stack(keep) if keep else torch.zeros(0, dtype=torch.long)


    def batched_nms(boxes, scores, idxs, iou_threshold):
        if boxes.numel() == 0:
            return torch.zeros(0, dtype=torch.long, device=boxes.device)
        offsets = idxs.to(boxes) * (boxes.max() + 1)  # boxes of different categories never overlap
        return nms(boxes + offsets[:, None], scores, iou_threshold)


    class ToTensor:
        def __call__(self, pic):
            return torch.from_numpy(pic).permute(2, 0, 1).float().div(255.0)


    class Resize(torch.nn.Module):
        def __init__(self, size):
            super().__init__()
            self.size = [int(size[0]), int(size[1])]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.interpolate(x.unsqueeze(0), size=self.size, mode="bilinear", align_corners=False,
                                 antialias=True).squeeze(0)


    class Normalize(torch.nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.mean = [float(v) for v in mean]
            self.std = [float(v) for v in std]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            return (x - mean) / std
''')


@pytest.fixture
def standin_torchvision(monkeypatch, tmp_path):
    """Put the stand-in torchvision on sys.modules for one test; forget sam2 modules bound to it."""
    pytest.importorskip("torch")
    try:
        import torchvision  # noqa: F401

        pytest.skip("a real torchvision is importable: no stand-in needed (run SAM 2 with it instead)")
    except Exception:  # noqa: BLE001 — missing, or the CUDA-linked build failing against CPU torch
        pass
    src = tmp_path / "standin_torchvision.py"
    src.write_text(STANDIN_TORCHVISION)  # a real file, so torch.jit.script can read the source
    monkeypatch.syspath_prepend(str(tmp_path))
    import standin_torchvision as impl

    tv = types.ModuleType("torchvision")
    ops = types.ModuleType("torchvision.ops")
    boxes = types.ModuleType("torchvision.ops.boxes")
    transforms = types.ModuleType("torchvision.transforms")
    for mod in (ops, boxes):
        mod.batched_nms, mod.box_area, mod.nms, mod.box_iou = impl.batched_nms, impl.box_area, impl.nms, impl.box_iou
    transforms.Normalize, transforms.Resize, transforms.ToTensor = impl.Normalize, impl.Resize, impl.ToTensor
    tv.ops, tv.transforms, ops.boxes = ops, transforms, boxes
    for name, mod in {"torchvision": tv, "torchvision.ops": ops, "torchvision.ops.boxes": boxes,
                      "torchvision.transforms": transforms}.items():
        monkeypatch.setitem(sys.modules, name, mod)
    before = {m for m in sys.modules if m.startswith("sam2")}
    yield
    for name in [m for m in sys.modules if m.startswith("sam2") and m not in before]:
        del sys.modules[name]


@pytest.mark.slow
def test_sam2_code_path_runs_for_real_on_cpu(standin_torchvision):
    """build_sam2 (hiera tiny, random weights) + SAM2AutomaticMaskGenerator through the adapter."""
    pytest.importorskip("sam2", exc_type=ImportError)
    import torch

    torch.manual_seed(0)
    options = {"points_per_side": 4, "points_per_batch": 16, "pred_iou_thresh": 0.0,
               "stability_score_thresh": 0.0, "box_nms_thresh": 1.0}
    generator = build_sam2_generator("configs/sam2.1/sam2.1_hiera_t.yaml", None, "cpu", options,
                                     random_weights=True)
    calls = []
    real_generate = generator.generate

    def generate(image):
        out = real_generate(image)
        calls.append(out)
        return out

    generator.generate = generate
    img = photo("astronaut", (96, 64)).astype(np.float32) / 255
    seg = Sam2Segmenter(generator=generator, max_objects=3, min_area=0.0, dedupe_iou=1.01)
    masks = seg.segment(img)
    assert len(calls) == 1, "SAM 2's automatic mask generator ran"
    raw = calls[0]
    assert isinstance(raw, list)
    for rec in raw:  # the real output format the adapter relies on
        assert rec["segmentation"].shape == (64, 96) and rec["segmentation"].dtype == bool
        assert {"area", "predicted_iou", "stability_score"} <= rec.keys()
    nonempty = [r for r in raw if r["segmentation"].any()]
    print(f"SAM 2 (random weights) returned {len(raw)} masks, {len(nonempty)} non-empty")
    assert len(masks) == min(3, len(nonempty))
    assert all(m.shape == (64, 96) and m.dtype == bool for m in masks)
