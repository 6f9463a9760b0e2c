"""FeatSharp-style feature upsampler (arXiv 2502.16025) for a frozen :class:`RadioEncoder`.

For an image ``(B, 3, H, W)`` the encoder gives ``(B, C, h, w)`` features. The upsampler returns
``(B, C, u·h, u·w)``:

1. a learned per-position **de-bias** map (the fixed ViT artefacts at each patch position) is
   subtracted from every encoder output;
2. the low-res map is **joint-bilateral upsampled** (JBU), guided by the image at the output grid;
3. the image is upsampled ``u×``, cut into ``u × u`` **tiles**, each encoded at the base resolution and
   stitched, plus a learned **tile position embedding**;
4. one **local-attention** (windowed) block fuses the two maps into the output.

Training is by **multi-view consistency**: a jittered view (crop + flip) of the upsampled map, pooled
back to the base grid and re-biased, must match the encoder's own output on that view of the image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from vlm.encoder.radio import RadioEncoder

__all__ = ["FeatSharpConfig", "FeatSharpUpsampler", "multiview_loss", "fit_featsharp"]


@dataclass
class FeatSharpConfig:
    """upsample: factor u; window: local-attention window (output tokens per side); jbu_radius: JBU
    neighbourhood radius in output pixels; min_view_scale: smallest crop side of a training view."""

    upsample: int = 2
    window: int = 7
    num_heads: int = 4
    jbu_radius: int = 2
    min_view_scale: float = 0.6
    debias_grid: int = 14

    def to_dict(self) -> dict:
        return asdict(self)


class FeatSharpUpsampler(nn.Module):
    """``forward(pixel_values (B, 1|3, H, W) in [0, 1]) → (B, C, u·h, u·w)``; the encoder stays frozen."""

    def __init__(self, encoder: RadioEncoder, config: FeatSharpConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or FeatSharpConfig()
        c = encoder.hidden_size
        self.encoder = encoder.eval().requires_grad_(False)
        self.debias = nn.Parameter(torch.zeros(1, c, cfg.debias_grid, cfg.debias_grid))
        self.tile_pos = nn.Parameter(torch.zeros(cfg.upsample**2, c))
        self.log_sigma_space = nn.Parameter(torch.tensor(0.0))
        self.log_sigma_range = nn.Parameter(torch.tensor(-2.0))
        self.fuse_in = nn.Linear(2 * c, c)
        self.norm1 = nn.LayerNorm(c)
        self.attn = nn.MultiheadAttention(c, cfg.num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(c)
        self.mlp = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
        self.out = nn.Linear(c, c)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)  # starts as the JBU map: training only adds detail

    def train(self, mode: bool = True) -> "FeatSharpUpsampler":
        super().train(mode)
        self.encoder.eval()
        return self

    def base_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Encoder features ``(B, C, h, w)`` without the de-bias (what the encoder itself says)."""
        with torch.no_grad():
            return self.encoder(pixel_values, spatial=True).features

    def bias_map(self, h: int, w: int) -> torch.Tensor:
        return F.interpolate(self.debias, size=(h, w), mode="bilinear", align_corners=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        u = self.config.upsample
        low = self.base_features(pixel_values)
        b, c, h, w = low.shape
        low = low - self.bias_map(h, w)
        guide = F.interpolate(pixel_values.mean(1, keepdim=True), size=(u * h, u * w), mode="area")
        jbu = self._joint_bilateral(low, guide)  # (B, C, uh, uw)
        tiles = self._tile_features(pixel_values, h, w)  # (B, C, uh, uw)
        x = torch.cat([jbu, tiles], dim=1).permute(0, 2, 3, 1)  # (B, uh, uw, 2C)
        x = self.fuse_in(x)
        x = x + self._window_attention(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return jbu + self.out(x).permute(0, 3, 1, 2)

    def _tile_features(self, pixel_values: torch.Tensor, h: int, w: int) -> torch.Tensor:
        u = self.config.upsample
        hh, ww = pixel_values.shape[-2:]
        big = F.interpolate(pixel_values, scale_factor=u, mode="bilinear", align_corners=False)
        rows = []
        for i in range(u):
            cols = []
            for j in range(u):
                tile = big[..., i * hh:(i + 1) * hh, j * ww:(j + 1) * ww]
                feats = self.base_features(tile) - self.bias_map(h, w)
                cols.append(feats + self.tile_pos[i * u + j].view(1, -1, 1, 1))
            rows.append(torch.cat(cols, dim=-1))
        return torch.cat(rows, dim=-2)

    def _joint_bilateral(self, low: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """Bilinear-upsampled low-res map refined by a bilateral kernel whose range term follows the
        image (learned spatial and range widths)."""
        b, c, hl, wl = low.shape
        hh, ww = guide.shape[-2:]
        up = F.interpolate(low, size=(hh, ww), mode="bilinear", align_corners=False)
        k = 2 * self.config.jbu_radius + 1
        r = k // 2  # replicate borders so edge pixels average real neighbours only
        patches = F.unfold(F.pad(up, (r, r, r, r), mode="replicate"), k).view(b, c, k * k, hh * ww)
        g = F.unfold(F.pad(guide, (r, r, r, r), mode="replicate"), k)  # (B, k², L)
        centre = guide.flatten(2)  # (B, 1, L)
        offs = torch.arange(k, device=low.device, dtype=low.dtype) - k // 2
        d2 = (offs.view(-1, 1) ** 2 + offs.view(1, -1) ** 2).flatten() / self.config.upsample**2  # low-res units
        logit = -d2.view(1, -1, 1) / (2 * self.log_sigma_space.exp() ** 2) - (g - centre) ** 2 / (2 * self.log_sigma_range.exp() ** 2)
        weights = logit.softmax(dim=1)  # (B, k², L)
        return torch.einsum("bckl,bkl->bcl", patches, weights).view(b, c, hh, ww)

    def _window_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Self-attention inside non-overlapping ``window × window`` blocks of ``(B, H, W, C)``."""
        b, hh, ww, c = x.shape
        s = self.config.window
        ph, pw = (-hh) % s, (-ww) % s
        x = F.pad(x, (0, 0, 0, pw, 0, ph))
        nh, nw = (hh + ph) // s, (ww + pw) // s
        win = x.view(b, nh, s, nw, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nh * nw, s * s, c)
        out, _ = self.attn(win, win, win, need_weights=False)
        out = out.view(b, nh, nw, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, nh * s, nw * s, c)
        return out[:, :hh, :ww]


def multiview_loss(upsampler: FeatSharpUpsampler, pixel_values: torch.Tensor) -> torch.Tensor:
    """Multi-view consistency: ``pool_u(view(F_hi)) + bias`` vs ``encoder(view(image))`` (MSE)."""
    cfg = upsampler.config
    b = pixel_values.shape[0]
    hi = upsampler(pixel_values)  # (B, C, uh, uw)
    scale = torch.empty(b, device=hi.device).uniform_(cfg.min_view_scale, 1.0)
    flip = torch.where(torch.rand(b, device=hi.device) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=hi.device)
    theta[:, 0, 0], theta[:, 1, 1] = scale * flip, scale
    theta[:, 0, 2] = (torch.rand(b, device=hi.device) * 2 - 1) * (1 - scale)
    theta[:, 1, 2] = (torch.rand(b, device=hi.device) * 2 - 1) * (1 - scale)
    view_img = F.grid_sample(pixel_values, F.affine_grid(theta, list(pixel_values.shape), align_corners=False), align_corners=False)
    target = upsampler.base_features(view_img)  # (B, C, h, w)
    h, w = target.shape[-2:]
    view_hi = F.grid_sample(hi, F.affine_grid(theta, [b, hi.shape[1], *hi.shape[-2:]], align_corners=False), align_corners=False)
    pred = F.adaptive_avg_pool2d(view_hi, (h, w)) + upsampler.bias_map(h, w)
    return F.mse_loss(pred, target)


def fit_featsharp(upsampler: FeatSharpUpsampler, images: torch.Tensor, steps: int = 200, batch_size: int = 8, lr: float = 1e-3, seed: int = 0) -> list[float]:
    """Train the upsampler's own parameters on ``images`` ``(N, 1|3, H, W)`` in [0, 1]; returns the loss curve."""
    gen = torch.Generator().manual_seed(seed)
    params = [p for n, p in upsampler.named_parameters() if not n.startswith("encoder.")]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    upsampler.train()
    losses = []
    for _ in tqdm(range(steps), desc="featsharp", leave=False):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        loss = multiview_loss(upsampler, images[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    upsampler.eval()
    return losses
