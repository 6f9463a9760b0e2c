"""Teachers for stage 1 (vision distillation) and the phantom images they are distilled on.

Three teachers, each seeing images differently:

* ``seg`` — the CT segmentation expert's 3D UNet: patch features are its stride-4 decoder/skip
  features on the axial slice, the summary its bottleneck level averaged over the slice;
* ``cxr`` — the chest X-ray classifier: its last spatial feature map and its pooled features;
* ``clip`` — a small contrastive image–caption model trained here on phantom images and captions
  written from each case's ground truth (a different, language-shaped view of the same images).

Every teacher covers the images of its domain (``kinds``); targets are computed once and cached as
:class:`TeacherTargets` on the student's patch grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from data.errors import M3Error
from data.phantoms import generate
from data.phantoms.labels import CT_LABELS, CT_ORGANS, CXR_FINDINGS

__all__ = [
    "PhantomImages", "TeacherTargets", "build_phantom_images", "caption_for_slice", "caption_for_cxr",
    "ContrastiveTeacher", "train_contrastive_teacher", "contrastive_targets", "cxr_targets", "TeacherError",
]

CT_CROP = 128  # model-grid voxels (3 mm) kept around the slice centre: a 384 mm field of view
SEG_STRIDE = 4  # the UNet feature level used as the seg teacher's patch features
SEG_FEATURE_MODULE = "model.1.submodule.1"  # (B, 2·c1, X/4, Y/4, Z/4): skip + decoder features
SEG_SUMMARY_MODULE = "model.1.submodule.1.submodule.1"  # (B, c2 + c3, X/8, Y/8, Z/8): bottleneck + skip


class TeacherError(M3Error, RuntimeError):
    """A teacher could not be built or run (missing expert weights, unexpected network)."""


@dataclass
class PhantomImages:
    """Images for distillation and probes, all from seeded phantoms.

    images: ``(N, 1, S, S)`` uint8 (display-windowed, 0..255); kinds: "ct" | "cxr" per image;
    seg: ``(N, L, L)`` int16 CT organ labels (``CT_LABELS`` values; −1 for non-CT images);
    findings: ``(N, 5)`` float32 CXR labels in ``CXR_FINDINGS`` order (NaN for non-CXR);
    captions: one text per image; held_out: ``(N,)`` bool, cases never used for training;
    case: ``(N,)`` int source case index (slices of one CT volume share it).
    """

    images: torch.Tensor
    kinds: list[str]
    seg: torch.Tensor
    findings: torch.Tensor
    captions: list[str]
    held_out: torch.Tensor
    case: torch.Tensor

    def pixels(self, index: torch.Tensor | slice) -> torch.Tensor:
        """Float images in [0, 1] ``(n, 1, S, S)``."""
        return self.images[index].float() / 255.0

    def kind_mask(self, kinds: tuple[str, ...]) -> torch.Tensor:
        return torch.tensor([k in kinds for k in self.kinds])


@dataclass
class TeacherTargets:
    """One teacher's cached targets: summary ``(N, S)``, features ``(N, F, h, w)`` (float16, on the
    student's patch grid), and ``mask`` ``(N,)`` — the images this teacher covers."""

    name: str
    summary: torch.Tensor
    features: torch.Tensor
    mask: torch.Tensor

    @property
    def summary_dim(self) -> int:
        return int(self.summary.shape[1])

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])


def build_phantom_images(
    n_ct_cases: int, n_cxr_cases: int, held_out_fraction: float, seed: int, image_size: int = 224,
    label_size: int = 112, slices_per_ct: int = 8, seg_expert=None, patch_size: int = 16,
) -> tuple[PhantomImages, TeacherTargets | None]:
    """CT axial slices (with the seg teacher's targets when ``seg_expert`` is given) and CXR images.

    CT slices are cut from the expert's model grid (RAS, 3 mm), so image, labels and UNet features
    line up voxel for voxel; the last ``held_out_fraction`` of the cases of each kind are held out.
    """
    imgs, kinds, segs, finds, caps, held, case = [], [], [], [], [], [], []
    s_sum, s_feat = [], []
    grid = image_size // patch_size
    n_ct_held = int(round(n_ct_cases * held_out_fraction))
    for i in tqdm(range(n_ct_cases), desc="CT phantoms", leave=False):
        ph = generate("ct", seed + i, shape=(CT_CROP, CT_CROP, 72), spacing=(3.0, 3.0, 3.0))  # on the expert grid
        slab, lab, z_idx, feats = _ct_model_grid(ph, seg_expert, slices_per_ct, seed + i)
        for n, z in enumerate(z_idx):
            img = _window(slab[:, :, z].T, ph.volume.window)
            imgs.append(_resize(img, image_size))
            segs.append(_resize_labels(lab[:, :, z].T, label_size))
            finds.append(np.full(len(CXR_FINDINGS), np.nan, np.float32))
            caps.append(caption_for_slice(ph.truth, lab[:, :, z]))
            kinds.append("ct")
            held.append(i >= n_ct_cases - n_ct_held)
            case.append(i)
            if feats is not None:
                f_map, s_vec = feats[0][n], feats[1][n]
                s_feat.append(F.adaptive_avg_pool2d(f_map[None], grid)[0].half())
                s_sum.append(s_vec.half())
    n_cxr_held = int(round(n_cxr_cases * held_out_fraction))
    for i in tqdm(range(n_cxr_cases), desc="CXR phantoms", leave=False):
        ph = generate("cxr", seed + 50_000 + i)
        img = _window(ph.volume.array[:, :, 0].T.astype(np.float32), ph.volume.window)
        imgs.append(_resize(img, image_size))
        segs.append(np.full((label_size, label_size), -1, np.int16))
        finds.append(np.array([float(ph.truth["findings"][f]) for f in CXR_FINDINGS], np.float32))
        caps.append(caption_for_cxr(ph.truth))
        kinds.append("cxr")
        held.append(i >= n_cxr_cases - n_cxr_held)
        case.append(n_ct_cases + i)
    data = PhantomImages(
        images=torch.from_numpy(np.stack(imgs))[:, None], kinds=kinds, seg=torch.from_numpy(np.stack(segs)),
        findings=torch.from_numpy(np.stack(finds)), captions=caps, held_out=torch.tensor(held), case=torch.tensor(case),
    )
    seg_targets = None
    if seg_expert is not None:
        n = len(kinds)
        mask = data.kind_mask(("ct",))
        feat = torch.zeros(n, s_feat[0].shape[0], grid, grid, dtype=torch.float16)
        summ = torch.zeros(n, s_sum[0].shape[0], dtype=torch.float16)
        feat[mask], summ[mask] = torch.stack(s_feat), torch.stack(s_sum)
        seg_targets = TeacherTargets("seg", summ, feat, mask)
    return data, seg_targets


def caption_for_slice(truth: dict, labels_2d: np.ndarray) -> str:
    """A short report line for one axial CT slice from the case truth and the slice's labels."""
    present = set(np.unique(labels_2d).tolist())
    organs = [CT_LABELS[v] for v in CT_ORGANS if v in present]
    lesions = [CT_LABELS[v] for v in (10, 11, 12) if v in present]
    text = f"axial ct, {truth.get('phase', 'unknown')} phase, {truth.get('body_region', '')}"
    text += ", showing " + (", ".join(organs) if organs else "no major organs")
    return text + (", with " + ", ".join(lesions) if lesions else ", no lesion")


def caption_for_cxr(truth: dict) -> str:
    """A short report line for a chest radiograph from its truth."""
    labels = [f for f in CXR_FINDINGS if truth["findings"].get(f)]
    return "chest radiograph pa, " + (", ".join(labels) if labels else "no acute finding")


class ContrastiveTeacher(nn.Module):
    """CLIP-style pair: a small conv image tower ``(B, 1, S, S)`` → features ``(B, 128, S/16, S/16)``
    and embedding ``(B, 64)``, and a bag-of-words text tower → ``(B, 64)``."""

    def __init__(self, vocab: list[str], width: int = 128, embed_dim: int = 64) -> None:
        super().__init__()
        self.vocab = {w: i + 1 for i, w in enumerate(vocab)}  # 0 = unknown word
        layers: list[nn.Module] = [nn.Conv2d(1, 32, 4, stride=4), nn.BatchNorm2d(32), nn.GELU()]  # stride-4 stem
        for cin, cout in ((32, 64), (64, width)):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.GELU()]
        self.image_tower = nn.Sequential(*layers)
        self.image_proj = nn.Linear(width, embed_dim)
        self.text_embed = nn.EmbeddingBag(len(vocab) + 1, embed_dim, mode="mean")
        self.text_proj = nn.Linear(embed_dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(2.6))

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 1, S, S)`` in [0, 1] → (embedding ``(B, 64)``, features ``(B, 128, S/16, S/16)``)."""
        feats = self.image_tower(pixels * 2 - 1)
        return self.image_proj(feats.mean((2, 3))), feats

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        ids = [torch.tensor([self.vocab.get(w, 0) for w in _words(c)] or [0]) for c in captions]
        offsets = torch.tensor([0] + [len(t) for t in ids[:-1]]).cumsum(0)
        return self.text_proj(self.text_embed(torch.cat(ids), offsets))

    def loss(self, pixels: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """Symmetric InfoNCE over the batch."""
        img = F.normalize(self.encode_image(pixels)[0], dim=-1)
        txt = F.normalize(self.encode_text(captions), dim=-1)
        logits = img @ txt.T * self.logit_scale.exp().clamp(max=100)
        target = torch.arange(len(captions))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def train_contrastive_teacher(data: PhantomImages, steps: int, batch_size: int = 32, lr: float = 2e-3, seed: int = 0) -> tuple[ContrastiveTeacher, list[float]]:
    """Train :class:`ContrastiveTeacher` on the training (not held-out) images; returns it and its loss curve."""
    torch.manual_seed(seed)
    train_idx = torch.nonzero(~data.held_out).flatten()
    vocab = sorted({w for i in train_idx.tolist() for w in _words(data.captions[i])})
    model = ContrastiveTeacher(vocab)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    losses = []
    for _ in tqdm(range(steps), desc="contrastive teacher", leave=False):
        idx = train_idx[torch.randperm(len(train_idx))[:batch_size]]
        loss = model.loss(data.pixels(idx), [data.captions[i] for i in idx.tolist()])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses


@torch.no_grad()
def contrastive_targets(model: ContrastiveTeacher, data: PhantomImages, grid: int, batch_size: int = 64) -> TeacherTargets:
    """The contrastive teacher's embedding and feature map for every image (it covers all kinds)."""
    model.eval()
    summ, feat = [], []
    for start in range(0, len(data.kinds), batch_size):
        emb, f = model.encode_image(data.pixels(slice(start, start + batch_size)))
        summ.append(emb.half())
        feat.append(F.adaptive_avg_pool2d(f, grid).half())
    return TeacherTargets("clip", torch.cat(summ), torch.cat(feat), torch.ones(len(data.kinds), dtype=torch.bool))


@torch.no_grad()
def cxr_targets(expert, data: PhantomImages, grid: int, batch_size: int = 32) -> TeacherTargets:
    """The CXR expert's last spatial DenseNet feature map (resampled to ``grid``) and its global
    average as summary, on the CXR images (the same input scaling as the expert's own)."""
    network = expert.network
    size = int(expert.config.image_size)

    def preprocess(pixels: torch.Tensor) -> torch.Tensor:  # rows/cols → the expert's (i, j) axes
        x = F.interpolate(pixels.transpose(-1, -2), size=(size, size), mode="area")
        flat = x.flatten(1)
        lo = torch.quantile(flat, expert.config.low_percentile / 100, dim=1).view(-1, 1, 1, 1)
        hi = torch.quantile(flat, expert.config.high_percentile / 100, dim=1).view(-1, 1, 1, 1)
        return ((x - lo) / (hi - lo).clamp(min=1e-6)).clamp(0, 1)

    network.eval()
    captured: list[torch.Tensor] = []
    last_spatial = _last_spatial_module(network, preprocess(data.pixels(slice(0, 1))))
    handle = last_spatial.register_forward_hook(lambda m, i, o: captured.append(o))
    mask = data.kind_mask(("cxr",))
    idx = torch.nonzero(mask).flatten()
    summ, feat = [], []
    try:
        for start in range(0, len(idx), batch_size):
            captured.clear()
            network(preprocess(data.pixels(idx[start:start + batch_size])))
            f = captured[-1].float().transpose(-1, -2)  # back to (rows, cols)
            summ.append(f.mean((2, 3)))
            feat.append(F.adaptive_avg_pool2d(f, grid))
    finally:
        handle.remove()
    n = len(data.kinds)
    s_all = torch.zeros(n, summ[0].shape[1], dtype=torch.float16)
    f_all = torch.zeros(n, feat[0].shape[1], grid, grid, dtype=torch.float16)
    s_all[idx], f_all[idx] = torch.cat(summ).half(), torch.cat(feat).half()
    return TeacherTargets("cxr", s_all, f_all, mask)


def _last_spatial_module(network: nn.Module, example: torch.Tensor) -> nn.Module:
    """The last module (in call order) whose output is a ``(B, C, h, w)`` map with h, w ≥ 4."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m) if torch.is_tensor(o) and o.ndim == 4 and min(o.shape[-2:]) >= 4 else None)
             for m in network.modules() if not list(m.children())]
    try:
        network(example)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise TeacherError("CXR teacher: the network produced no (B, C, h, w) feature map of size >= 4; cannot take its features.")
    return order[-1]


def _ct_model_grid(ph, seg_expert, n_slices: int, seed: int):
    """(HU slab (X, Y, Z) on the model grid cropped to CT_CROP², labels, chosen z, teacher features)."""
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(ph.volume.affine)  # the phantom is on the 3 mm grid: only flip to RAS
    img = apply_orientation(ph.volume.array.astype(np.float32), ornt)
    lab = apply_orientation(ph.labels, ornt).astype(np.int16)
    img, lab = _crop_xy(img, -1000.0), _crop_xy(lab, 0)
    z_all = np.arange(SEG_STRIDE // 2, img.shape[2] - 1, SEG_STRIDE)  # centres of the stride-4 cells
    organ_z = [z for z in z_all if np.isin(lab[:, :, z], CT_ORGANS).mean() > 0.02]
    rng = np.random.default_rng(seed)
    z_idx = sorted(rng.choice(organ_z, size=min(n_slices, len(organ_z)), replace=False).tolist()) if organ_z else []
    feats = None
    if seg_expert is not None and z_idx:
        from experts.ct_segmentation import ct_input  # the expert's own input channels on its grid

        x = np.asarray(torch.as_tensor(ct_input(ph.volume, seg_expert.config)).detach().cpu())
        if x.shape[1:] != ph.volume.shape:
            raise TeacherError(f"seg teacher: expected the phantom already on the expert grid {ph.volume.shape}, got {x.shape[1:]}.")
        x = np.stack([_crop_xy(c, float(c.min())) for c in x])
        feats = _unet_slice_features(seg_expert, x, [z // SEG_STRIDE for z in z_idx])
    return img, lab, z_idx, feats


def _unet_slice_features(expert, x_np: np.ndarray, zf: list[int]):
    """UNet features of the ``(C_in, X, Y, Z)`` input slab at feature-grid slices ``zf``:
    ([(F, X/4, Y/4)], [(S,)]) with the maps in (rows, cols) order like the images."""
    net = expert.network
    modules = dict(net.named_modules())
    if SEG_FEATURE_MODULE not in modules or SEG_SUMMARY_MODULE not in modules:
        raise TeacherError(f"seg teacher: the CT network has no module {SEG_FEATURE_MODULE!r}; it is not the expected MONAI UNet.")
    grabbed: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: grabbed.__setitem__(n, o)) for n in (SEG_FEATURE_MODULE, SEG_SUMMARY_MODULE)]

    def features(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net(x)
        return grabbed[SEG_FEATURE_MODULE], grabbed[SEG_SUMMARY_MODULE]

    x = torch.from_numpy(x_np).float()[None]
    pad_z = (-x.shape[-1]) % 8
    x = F.pad(x, (0, pad_z, 0, 0, 0, 0), mode="replicate")
    try:
        with torch.inference_mode():  # one whole-slab pass: the UNet is fully convolutional
            fmap, smap = features(x)
    finally:
        for h in hooks:
            h.remove()
    fmap, smap = fmap[0].float(), smap[0].float()  # (64, X/4, Y/4, Z/4), (192, X/8, Y/8, Z/8)
    f_list = [fmap[:, :, :, z].transpose(1, 2) for z in zf]  # to (C, rows, cols) like the image
    s_list = [smap[:, :, :, min(z // 2, smap.shape[-1] - 1)].mean((1, 2)) for z in zf]
    return f_list, s_list


def _crop_xy(a: np.ndarray, fill: float) -> np.ndarray:
    out = np.full((CT_CROP, CT_CROP, a.shape[2]), fill, dtype=a.dtype)
    sx, sy = [max((s - CT_CROP) // 2, 0) for s in a.shape[:2]]
    dx, dy = [max((CT_CROP - s) // 2, 0) for s in a.shape[:2]]
    w, h = min(CT_CROP, a.shape[0]), min(CT_CROP, a.shape[1])
    out[dx:dx + w, dy:dy + h] = a[sx:sx + w, sy:sy + h]
    return out


def _window(img: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    c, w = window if window else (float(img.mean()), float(img.max() - img.min()) or 1.0)
    return np.clip((img - (c - w / 2)) / w, 0.0, 1.0)


def _resize(img01: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img01, dtype=np.float32))[None, None]
    return (F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0, 0].clamp(0, 1) * 255).round().byte().numpy()


def _resize_labels(lab: np.ndarray, size: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(lab, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(size, size), mode="nearest")[0, 0].short().numpy()


def _words(text: str) -> list[str]:
    return text.replace(",", " ").split()


def load_or_build_targets(config) -> tuple[PhantomImages, dict[str, TeacherTargets]]:
    """The cached images and teacher targets of a :class:`~vlm.train.vision.VisionStageConfig`
    (``<data_dir>/targets.pt``), built on first use; a requested teacher missing from the cache is
    added when it becomes available (phantoms are seeded, so the same images are rebuilt). Expert
    teachers whose weights are missing are left out with a warning naming the command that trains them."""
    import logging
    import os
    from pathlib import Path

    log = logging.getLogger(__name__)
    folder = Path(config.data_dir or Path(config.output_dir) / "data")
    cache = folder / "targets.pt"
    blob = torch.load(cache, map_location="cpu", weights_only=False) if cache.is_file() else {}
    targets: dict[str, TeacherTargets] = blob.get("targets", {})
    wanted = [t for t in config.teachers if t not in targets]
    experts = _expert_teachers([t for t in wanted if t in ("seg", "cxr")], log)
    grid = config.image_size // config.patch_size
    build = dict(held_out_fraction=config.held_out_fraction, seed=config.seed, image_size=config.image_size,
                 label_size=min(112, config.image_size), slices_per_ct=config.slices_per_ct, patch_size=config.patch_size)
    changed = False
    if "data" in blob:
        data = blob["data"]
        if "seg" in experts:  # same seeds → same slices; only the seg targets are new
            _, seg = build_phantom_images(config.n_ct_cases, 0, seg_expert=experts["seg"], **build)
            targets["seg"] = _pad_to(seg, len(data.kinds))
            changed = True
    else:
        data, seg = build_phantom_images(config.n_ct_cases, config.n_cxr_cases, seg_expert=experts.get("seg"), **build)
        if seg is not None:
            targets["seg"] = seg
        changed = True
    if "cxr" in experts:
        targets["cxr"] = cxr_targets(experts["cxr"], data, grid)
        changed = True
    if "clip" in wanted:
        model, losses = train_contrastive_teacher(data, config.clip_steps, seed=config.seed)
        targets["clip"] = contrastive_targets(model, data, grid)
        blob.update({"clip_state": model.state_dict(), "clip_vocab": list(model.vocab), "clip_losses": losses})
        changed = True
    if changed:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        torch.save({**blob, "data": data, "targets": targets}, tmp)
        os.replace(tmp, cache)
    return data, {n: targets[n] for n in config.teachers if n in targets}


def _expert_teachers(names: list[str], log) -> dict:
    from experts.base import ExpertError
    from experts.registry import default_registry

    out = {}
    for teacher in names:
        expert_name = {"seg": "ct_segmentation", "cxr": "cxr_classification"}[teacher]
        try:
            out[teacher] = default_registry().get(expert_name)
        except ExpertError as exc:
            log.warning("teacher %r left out: %s", teacher, exc)
    return out


def _pad_to(t: TeacherTargets, n: int) -> TeacherTargets:
    """Targets computed on the first ``len(t.mask)`` images, extended with uncovered rows to ``n``."""
    k = len(t.mask)
    summ = torch.zeros(n, t.summary.shape[1], dtype=t.summary.dtype)
    feat = torch.zeros(n, *t.features.shape[1:], dtype=t.features.dtype)
    mask = torch.zeros(n, dtype=torch.bool)
    summ[:k], feat[:k], mask[:k] = t.summary, t.features, t.mask
    return TeacherTargets(t.name, summ, feat, mask)
