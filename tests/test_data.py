"""segany.data: readers on the real data in shared/data (a few images each), augmentations with known answers."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest
from paths import DATA  # noqa: E402
from PIL import Image

from segany.data import (
    DSB2018,
    ADE20KFolder,
    AugmentConfig,
    BSDSEdges,
    BSDSRegions,
    CocoInstances,
    MaskFolder,
    MixedDataset,
    SA1BFolder,
    Sample,
    drop_large_masks,
    open_source,
)
from segany.data.augment import (
    color_jitter,
    copy_paste,
    hflip,
    large_scale_jitter,
    longest_side_shape,
    resize_and_pad,
)
from segany.data.bsds import read_overlap_ids

needs_data = pytest.mark.skipif(not (DATA / "README.md").is_file(), reason=f"shared data not found at {DATA}")


def raw(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


# --- folder benchmarks -----------------------------------------------------------------------------------


@needs_data
def test_grabcut_mixed_extensions_and_ignore_band() -> None:
    ds = MaskFolder(DATA / "grabcut")
    assert len(ds) == 50
    suffixes = {p.suffix for p in ds.image_paths.values()}
    assert {".jpg", ".JPG", ".bmp"} <= suffixes
    for stem in ("banana1", "music"):  # a .bmp and a .JPG image
        s = ds[ds.stems.index(stem)]
        gt = raw(DATA / "grabcut" / "masks" / f"{stem}.png")
        assert s.masks.shape == (1, *gt.shape) and s.image.shape == (*gt.shape, 3)
        assert s.ignore is not None
        assert int(s.ignore.sum()) == int((gt == 128).sum()) > 0
        assert int(s.masks.sum()) == int((gt == 255).sum())
        assert not (s.masks & s.ignore).any()  # the band is never foreground


@needs_data
def test_berkeley_binary_masks() -> None:
    ds = MaskFolder(DATA / "berkeley")
    assert len(ds) == 100
    s = ds[0]
    gt = raw(DATA / "berkeley" / "masks" / f"{ds.stems[0]}.png")
    assert s.ignore is None and int(s.masks.sum()) == int((gt == 255).sum()) > 0


@needs_data
def test_eval_only_benchmarks_refused_for_training() -> None:
    with pytest.raises(ValueError, match="evaluation-only"):
        open_source(DATA / "grabcut")
    assert isinstance(open_source(DATA / "berkeley", for_training=False), MaskFolder)


def _write(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_generic_folder_several_objects(tmp_path: Path) -> None:
    img = np.zeros((20, 30, 3), np.uint8)
    a0 = np.zeros((20, 30), np.uint8)
    a0[2:6, 2:6] = 255
    a1 = np.zeros((20, 30), np.uint8)
    a1[10:15, 10:20] = 1  # 0/1 masks are foreground too
    a1[15, 10:20] = 128  # ignore band
    _write(tmp_path / "images" / "a.JPG", img)
    _write(tmp_path / "images" / "b_2.png", img)  # an image whose stem itself ends in _<k>
    _write(tmp_path / "masks" / "a_0.png", a0)
    _write(tmp_path / "masks" / "a_1.png", a1)
    _write(tmp_path / "masks" / "b_2.png", a0)
    ds = MaskFolder(tmp_path)
    assert ds.stems == ["a", "b_2"]
    s = ds[0]
    assert s.masks.shape == (2, 20, 30)
    assert s.masks[0].sum() == 16 and s.masks[1].sum() == 50
    assert s.ignore is not None and s.ignore[1].sum() == 10 and s.ignore[0].sum() == 0
    assert ds[1].masks.shape == (1, 20, 30)


def test_generic_folder_label_maps(tmp_path: Path) -> None:
    labels = np.zeros((8, 8), np.uint16)
    labels[:2] = 1
    labels[4:] = 300
    labels[3] = 255
    _write(tmp_path / "images" / "x.png", np.zeros((8, 8, 3), np.uint8))
    _write(tmp_path / "masks" / "x.png", labels)
    s = MaskFolder(tmp_path, kind="labels", ignore_label=255)[0]
    assert s.masks.shape == (2, 8, 8) and s.masks[0].sum() == 16 and s.masks[1].sum() == 32
    assert s.ignore is not None and (s.ignore.sum(axis=(1, 2)) == 8).all()


def test_generic_folder_errors_name_the_files(tmp_path: Path) -> None:
    _write(tmp_path / "images" / "a.png", np.zeros((4, 4, 3), np.uint8))
    _write(tmp_path / "masks" / "zz.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="zz.png"):
        MaskFolder(tmp_path)
    (tmp_path / "masks" / "zz.png").unlink()
    with pytest.raises(ValueError, match="without masks"):
        MaskFolder(tmp_path)
    assert len(MaskFolder(tmp_path, skip_unlabeled=True)) == 0
    _write(tmp_path / "masks" / "a.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="differs"):
        MaskFolder(tmp_path)[0]


# --- COCO, BSDS, DSB -------------------------------------------------------------------------------------


@needs_data
def test_coco_instance_count_matches_pycocotools() -> None:
    from pycocotools.coco import COCO

    ds = CocoInstances(DATA / "coco_subsets")
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(DATA / "coco_subsets" / "instances.json"))
    for index in (0, len(ds) // 2):
        s = ds[index]
        img_id = ds.image_ids[index]
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[img_id], iscrowd=False))
        assert len(s.masks) == len(anns) > 0
        assert s.category_ids is not None and s.category_ids.tolist() == [a["category_id"] for a in anns]
        info = coco.imgs[img_id]
        assert s.image.shape == (info["height"], info["width"], 3)
        # polygon areas agree with the rasterised masks to within a few percent
        areas = s.masks.sum(axis=(1, 2))
        ref = np.array([a["area"] for a in anns])
        assert np.abs(areas - ref).sum() <= 0.05 * ref.sum() + 20 * len(ref)


@needs_data
def test_coco_training_leaves_out_mval_images() -> None:
    train = CocoInstances(DATA / "coco_subsets")
    full = CocoInstances(DATA / "coco_subsets", for_training=False)
    mval = set((DATA / "coco_subsets" / "overlap_with_coco_mval.txt").read_text().split())
    names = {Path(train.coco.imgs[i]["file_name"]).stem for i in train.image_ids}
    assert mval and not names & mval
    assert len(full) - len(train) == len(
        mval & {Path(full.coco.imgs[i]["file_name"]).stem for i in full.image_ids}
    )


@needs_data
def test_bsds_training_never_yields_benchmark_images() -> None:
    overlap = read_overlap_ids(DATA / "bsds500")
    assert len(overlap) > 50
    ds = BSDSRegions(DATA / "bsds500")
    yielded = {image_id for _, image_id, _ in ds.items}
    assert yielded and not yielded & overlap
    everything = BSDSRegions(DATA / "bsds500", for_training=False)
    assert overlap <= {image_id for _, image_id, _ in everything.items}
    with pytest.raises(ValueError, match="test split"):
        BSDSRegions(DATA / "bsds500", splits="test")


@needs_data
def test_bsds_regions_partition_the_image() -> None:
    ds = BSDSRegions(DATA / "bsds500", splits="train", annotator=1)
    split, image_id, k = ds.items[0]
    s = ds[0]
    labels = raw(DATA / "bsds500" / "groundtruth_png" / split / "segmentation" / f"{image_id}_{k}.png")
    assert len(s.masks) == len(np.unique(labels)) > 1
    assert (s.masks.sum(axis=0) == 1).all()  # every pixel in exactly one region
    assert s.source == f"bsds500/{split}/{image_id}#1"


@needs_data
def test_bsds_edges_give_every_annotator() -> None:
    ds = BSDSEdges(DATA / "bsds500")
    assert len(ds) == 200
    e = ds[0]
    n = len(list((DATA / "bsds500" / "groundtruth_png" / "test" / "boundaries").glob(f"{e.image_id}_*.png")))
    assert e.boundaries.shape == (n, *e.image.shape[:2]) and e.boundaries.dtype == np.bool_
    assert e.segmentations.shape == e.boundaries.shape and e.boundaries.any(axis=(1, 2)).all()


@needs_data
def test_dsb_one_mask_per_nucleus_file() -> None:
    ds = DSB2018(DATA / "dsb2018_nuclei")
    assert len(ds) == 120
    s = ds[0]
    files = list((DATA / "dsb2018_nuclei" / "stage1_train" / ds.ids[0] / "masks").glob("*.png"))
    assert len(s.masks) == len(files) and s.image.shape[2] == 3
    assert s.masks.any(axis=(1, 2)).all()
    inner = open_source(DATA / "dsb2018_nuclei" / "stage1_train")
    assert isinstance(inner, DSB2018) and inner.ids == ds.ids


def test_ade20k_visible_parts_are_the_objects(tmp_path: Path) -> None:
    street = tmp_path / "images" / "ADE" / "training" / "street"
    (street / "ADE_x").mkdir(parents=True)
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(street / "ADE_x.jpg")
    car = np.zeros((20, 30), np.uint8)
    car[5:15, 5:25] = 255
    car[5:15, 15:25] = 128  # hidden behind a pole: the pole's pixels, not the car's
    hidden = np.zeros((20, 30), np.uint8)
    hidden[0:4, 0:4] = 128  # nothing visible: no object to click on
    Image.fromarray(car).save(street / "ADE_x" / "instance_000_ADE_x.png")
    Image.fromarray(hidden).save(street / "ADE_x" / "instance_001_ADE_x.png")
    Image.fromarray(car).save(street / "ADE_x_seg.png")  # other files beside the image are not instances
    ds = ADE20KFolder(tmp_path)
    assert len(ds) == 1
    s = ds[0]
    assert s.source == "ade20k/ADE_x" and s.masks.shape == (1, 20, 30) and s.ignore is None
    assert s.masks[0].sum() == 10 * 10 and s.masks[0, 5:15, 5:15].all()
    with pytest.raises(ValueError, match="no ADE20K image"):
        ADE20KFolder(street / "ADE_x")


@needs_data
def test_ade20k_samples_read_with_their_instances() -> None:
    from segany.evaluate.runs import open_point_dataset

    ds = open_point_dataset(DATA / "ade20k_samples")
    assert isinstance(ds, ADE20KFolder) and len(ds) == 3
    s = ds[0]
    assert s.image.shape == (*s.masks.shape[1:], 3) and 0 < len(s.masks) <= 70
    assert s.masks.any(axis=(1, 2)).all()


# --- sample, augmentation, mixing ------------------------------------------------------------------------


def square_sample(h: int = 120, w: int = 200) -> Sample:
    """Black image with a white square (mask 0) and a grey bar (mask 1): content the masks must follow."""
    image = np.zeros((h, w, 3), np.uint8)
    masks = np.zeros((2, h, w), bool)
    image[30:70, 40:80] = 255
    masks[0, 30:70, 40:80] = True
    image[90:110, 100:190] = 128
    masks[1, 90:110, 100:190] = True
    return Sample(image=image, masks=masks, source="synthetic/square")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_sample_validates_shapes() -> None:
    with pytest.raises(ValueError, match="masks"):
        Sample(image=np.zeros((4, 4, 3), np.uint8), masks=np.zeros((1, 4, 5), bool))
    with pytest.raises(ValueError, match="image"):
        Sample(image=np.zeros((4, 4), np.uint8), masks=np.zeros((0, 4, 4), bool))


def test_drop_large_masks_at_90_percent() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    masks = np.zeros((3, 10, 10), bool)
    masks[0].flat[:90] = True  # exactly 90 %: kept
    masks[1].flat[:91] = True  # above: dropped
    masks[2, 0, 0] = True
    out = drop_large_masks(Sample(image=image, masks=masks, category_ids=np.array([1, 2, 3])))
    assert out.category_ids is not None and out.category_ids.tolist() == [1, 3]


@pytest.mark.parametrize("seed", range(6))
def test_large_scale_jitter_keeps_masks_on_content(seed: int) -> None:
    rng = np.random.default_rng(seed)
    out = large_scale_jitter(square_sample(), rng, size=160, scale=(0.3, 2.0))
    assert out.image.shape == (160, 160, 3) and out.masks.shape[1:] == (160, 160)
    grey = out.image.mean(axis=2)
    for m in out.masks:  # each surviving mask sits on one object's pixels: the white square or the grey bar
        assert grey[m].mean() > 200 or 100 < grey[m].mean() < 160
    white = grey > 200
    square = [m for m in out.masks if grey[m].mean() > 200]
    if white.sum() > 30:
        assert len(square) == 1 and iou(white, square[0]) > 0.85


def test_longest_side_shape_matches_official_rounding() -> None:
    from segment_anything.utils.transforms import ResizeLongestSide

    for h, w in [(1, 2048), (321, 481), (480, 640), (1500, 2250), (7, 3), (1024, 1024)]:
        assert longest_side_shape(h, w, 1024) == ResizeLongestSide.get_preprocess_shape(h, w, 1024)


def test_resize_and_pad_and_flip_follow_content() -> None:
    out = resize_and_pad(square_sample(), size=100)
    assert out.image.shape == (100, 100, 3)
    assert iou(out.image.min(axis=2) > 200, out.masks[0]) > 0.85
    assert (out.image[61:, :] == (124, 116, 104)).all() and not out.masks[:, 61:].any()  # 120x200 -> 60x100
    flipped = hflip(out)
    assert iou(flipped.image.min(axis=2) > 200, flipped.masks[0]) > 0.85
    assert (flipped.masks[:, :, ::-1] == out.masks).all()


def test_copy_paste_keeps_pixels_and_masks_consistent() -> None:
    rng = np.random.default_rng(0)
    dst = square_sample()
    src_img = np.full((120, 200, 3), 50, np.uint8)
    src_masks = np.zeros((2, 120, 200), bool)
    src_masks[0, 50:100, 60:120] = True  # overlaps dst's square and bar
    src_masks[1, 0:10, 0:10] = True
    src_img[src_masks[0]] = (0, 200, 0)
    src_img[src_masks[1]] = (0, 0, 200)
    src = Sample(image=src_img, masks=src_masks, source="synthetic/src")
    for _ in range(5):
        out = copy_paste(dst, src, rng)
        n_pasted = len(out.masks) - 2
        assert 1 <= n_pasted <= 2
        alpha = out.masks[2:].any(axis=0)
        assert (out.image[alpha] == src_img[alpha]).all()
        assert (out.image[~alpha] == dst.image[~alpha]).all()
        assert not (out.masks[:2] & alpha).any()  # occluded parts cut out of the masks below
        assert ((out.masks[:2] | alpha) >= dst.masks).all()  # and nothing else removed
        for m in out.masks[:2]:
            assert (out.image[m] == dst.image[m]).all()
    with pytest.raises(ValueError, match="equal sizes"):
        copy_paste(dst, square_sample(64, 64), rng)
    # a destination whose crop kept no mask (large-scale jitter can do that) still receives the paste
    empty = Sample(image=dst.image, masks=np.zeros((0, 120, 200), bool), source="synthetic/empty")
    out = copy_paste(empty, src, rng)
    assert (
        1 <= len(out.masks) <= 2
        and (out.image[out.masks.any(axis=0)] == src_img[out.masks.any(axis=0)]).all()
    )


def test_color_jitter_changes_pixels_not_masks() -> None:
    s = square_sample()
    s.image[:] = np.random.default_rng(1).integers(0, 256, s.image.shape, dtype=np.uint8)
    out = color_jitter(s, np.random.default_rng(0), 0.5, 0.5, 0.5, 0.1)
    assert out.image.shape == s.image.shape and out.image.dtype == np.uint8
    assert not np.array_equal(out.image, s.image) and out.masks is s.masks


class _ListSource:
    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def test_mixed_dataset_filters_and_is_deterministic() -> None:
    big = square_sample()
    big = Sample(
        image=big.image, masks=np.concatenate([big.masks, np.ones((1, 120, 200), bool)]), source="big"
    )
    ds = MixedDataset([_ListSource([big, square_sample()])], augment_cfg=AugmentConfig(size=96), seed=3)
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.shape == (96, 96, 3)
        assert all(m.mean() <= 0.9 for m in s.masks)
    plain = MixedDataset([_ListSource([big])])
    assert len(plain[0].masks) == 2  # the full-image mask is gone
    a, b = ds[0], ds[0]
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    ds.set_epoch(1)
    assert not np.array_equal(ds[0].image, a.image) or not np.array_equal(ds[0].masks, a.masks)


@needs_data
def test_mixed_real_sources_with_copy_paste() -> None:
    sources = [open_source(DATA / "coco_subsets"), open_source(DATA / "dsb2018_nuclei")]
    cfg = AugmentConfig(size=128, copy_paste_p=1.0)
    ds = MixedDataset(sources, weights=[1, 1], length=3, augment_cfg=cfg, seed=0)
    pasted = 0
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.shape == (128, 128, 3) and len(s.masks) >= 1 and s.masks.any(axis=(1, 2)).all()
        pasted += "+" in s.source
    assert pasted >= 1


def test_sa1b_folder_reader(tmp_path: Path) -> None:
    from segany.data.sa1b import records_to_sa1b, write_sa1b

    img = np.zeros((12, 16, 3), np.uint8)
    img[2:5, 3:9] = 200
    Image.fromarray(img).save(tmp_path / "sa_1.jpg", quality=95)
    mask = np.zeros((12, 16), bool)
    mask[2:5, 3:9] = True
    rec = {
        "segmentation": mask,
        "bbox": [3, 2, 6, 3],
        "area": 18,
        "predicted_iou": 0.9,
        "stability_score": 0.95,
        "crop_box": [0, 0, 16, 12],
        "point_coords": [[5, 3]],
    }
    write_sa1b(
        tmp_path / "sa_1.json", records_to_sa1b([rec], image_id=1, file_name="sa_1.jpg", height=12, width=16)
    )
    ds = open_source(tmp_path)
    assert isinstance(ds, SA1BFolder)
    s = ds[0]
    assert s.source == "sa1b/1" and (s.masks[0] == mask).all() and s.image.shape == (12, 16, 3)


@needs_data
def test_msrc_labelled_regions_are_the_masks_void_is_not() -> None:
    import json

    from segany.data import MSRCRegions

    ds = open_source(DATA / "msrc_v2")
    assert isinstance(ds, MSRCRegions) and len(ds) == 591
    index = json.loads((DATA / "msrc_v2" / "regions.json").read_text())
    stem = "10_10_s"  # regions 1, 2 flowers, 3 void
    s = ds[ds.stems.index(stem)]
    assert len(s.masks) == sum(v is not None for v in index[stem].values()) == 2
    ids = np.array(Image.open(DATA / "msrc_v2" / "regions" / f"{stem}.png"))
    assert np.array_equal(s.masks[0], ids == 1) and not (s.masks.any(0) & (ids == 3)).any()
    assert s.source == f"msrc_v2/{stem}"


@needs_data
def test_ccp_person_and_its_parts_nest() -> None:
    from segany.data import CCPParts

    ds = open_source(DATA / "ccp_parts")
    assert isinstance(ds, CCPParts) and len(ds) == 500
    s = ds[0]
    labels = np.array(Image.open(DATA / "ccp_parts" / "labels" / "0001.png"))
    assert np.array_equal(s.masks[0], labels > 0)  # the person: union of every label
    parts = s.masks[1:]
    assert len(parts) >= 3 and not (parts & ~s.masks[0]).any()  # every part lies inside the person
    assert (parts.reshape(len(parts), -1).sum(1) >= 0.001 * labels.size).all()
    # each part is one label's connected piece
    for p in parts:
        assert len(np.unique(labels[p])) == 1


def test_validation_split_is_stable_and_about_its_share() -> None:
    from segany.data import is_validation

    keys = [f"duts_tr/img_{i:05d}" for i in range(4000)]
    held = [k for k in keys if is_validation(k, 0.08)]
    assert 0.06 < len(held) / len(keys) < 0.10
    assert held == [k for k in keys if is_validation(k, 0.08)]  # a pure function of the key
    assert all(is_validation(k + "#3", 0.08) for k in held[:20])  # annotators of one image stay together
    assert not any(is_validation(k, 0.0) for k in keys[:100])
    with pytest.raises(ValueError):
        is_validation("x", 1.0)


def test_pack_leaves_the_validation_split_out(tmp_path: Path) -> None:
    from segany.data import is_validation
    from segany.train.cache import PackedSamples, pack_sources

    rng = np.random.default_rng(0)

    class Fake:
        def __len__(self) -> int:
            return 60

        def __getitem__(self, i: int) -> Sample:
            m = np.zeros((1, 32, 32), bool)
            m[0, 4:20, 4:20] = True
            return Sample(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), m, source=f"fake/{i}")

    pack_sources([("fake", Fake())], tmp_path / "p.npz", 32, validation_fraction=0.2)
    packed = PackedSamples(tmp_path / "p.npz")
    kept = {packed[i].source for i in range(len(packed))}
    expected = {f"fake/{i}" for i in range(60) if not is_validation(f"fake/{i}", 0.2)}
    assert kept == expected and 0 < len(expected) < 60
    assert packed.meta["validation_fraction"] == 0.2
