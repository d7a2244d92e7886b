"""E-RADIO: the hybrid CNN-transformer student of AM-RADIO (arXiv 2312.06709, section "E-RADIO").

Built from the paper's description (no reference code is vendored):

    stem   two stride-2 3x3 conv+BN+ReLU                                   /4
    stage1 C2f (YOLOv8-style) conv blocks, width w                         /4
    down   stride-2 3x3 conv+BN, channels x2
    stage2 C2f blocks, 2w                                                  /8
    down
    stage3 multi-resolution attention (MRA) layers, 4w                     /16
    down
    stage4 windowed-attention layers, 8w                                   /32
    neck   proj(stage3) + upsample2(proj(stage4)), each a 1x1 conv+BN      /16 -> dense features

An MRA layer runs a windowed attention pass on a 2x-downsampled map (upsampled back), then a windowed pass
at full resolution that sees the input plus that coarse context; a 1x1 conv+BN mixes both results and the
sum is added to the skip. Window size grows with resolution, as in the paper: side // 32 (7 at 224, 8 at
256, 12 at 384, 16 at 512), computed from each input's shorter side at forward time (not fixed when the
model is built), so a model built at 224 runs at 512 with 16×16 windows and the stage-4 map of a square
input is a single window at every resolution; a model built with an explicit ``window_size`` keeps it.
Maps are padded to a multiple of the window, and padded positions are masked out of attention.
Choices the paper leaves open (documented here, not claimed as the paper's): each C2f block carries one
bottleneck and an outer residual; attention layers are pre-norm with a depthwise 3x3 conv position
encoding; the coarse map is a 2x2 average pool; the paper states depths only for the large model, so every
size uses those depths. The summary is the spatial mean of the output features (K = 1).

Shape legend: B batch, C channels, H/W map sides, b windows x batch, N tokens per window, K summary tokens,
h/w output-grid sides (stride 16).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from stages.students.contract import Student, StudentOutput

INPUT_MULTIPLE = 32


@dataclass(frozen=True)
class ERADIOConfig:
    """One E-RADIO size. Stage widths are width * (1, 2, 4, 8); heads are used by stages 3 and 4 only."""

    width: int
    depths: tuple[int, int, int, int]
    heads: tuple[int, int, int, int]
    out_dim: int
    mlp_ratio: float = 4.0


_DEPTHS = (3, 3, 5, 5)
_HEADS = (2, 4, 8, 16)

# Sizes as data: XT/T/S/B/L widths 64/80/96/128/192; output = 8 * width (1536 for the reference large).
ERADIO_SIZES: dict[str, ERADIOConfig] = {
    "tiny_test": ERADIOConfig(width=16, depths=(1, 1, 1, 1), heads=(1, 1, 2, 2), out_dim=64),
    "xt": ERADIOConfig(width=64, depths=_DEPTHS, heads=_HEADS, out_dim=512),
    "t": ERADIOConfig(width=80, depths=_DEPTHS, heads=_HEADS, out_dim=640),
    "s": ERADIOConfig(width=96, depths=_DEPTHS, heads=_HEADS, out_dim=768),
    "b": ERADIOConfig(width=128, depths=_DEPTHS, heads=_HEADS, out_dim=1024),
    "l": ERADIOConfig(width=192, depths=_DEPTHS, heads=_HEADS, out_dim=1536),
}


def window_size_for(img_size: int) -> int:
    """Attention window side for a square input: img_size // 32 (7@224, 8@256, 12@384, 16@512)."""
    check_input_size(img_size, img_size)
    return img_size // INPUT_MULTIPLE


def window_for_input(height: int, width: int) -> int:
    """The window an input of this size runs with: its shorter side // 32 (``window_size_for``)."""
    check_input_size(height, width)
    return min(height, width) // INPUT_MULTIPLE


def check_input_size(height: int, width: int) -> None:
    """Raise ValueError naming the nearest valid sides when a side is not a positive multiple of 32."""
    for side in (height, width):
        if side < INPUT_MULTIPLE or side % INPUT_MULTIPLE:
            lower = max(INPUT_MULTIPLE, side // INPUT_MULTIPLE * INPUT_MULTIPLE)
            upper = (side // INPUT_MULTIPLE + 1) * INPUT_MULTIPLE
            nearest = sorted({lower, upper})
            raise ValueError(
                f"E-RADIO input sides must be multiples of {INPUT_MULTIPLE}; got {height}x{width} "
                f"(nearest valid sides for {side}: {nearest})"
            )


class ConvBN(nn.Sequential):
    """Conv (no bias) + BatchNorm, optionally followed by ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, *, stride: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Bottleneck(nn.Module):
    """YOLOv8 bottleneck: two 3x3 conv+BN+ReLU with a shortcut."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.cv1 = ConvBN(dim, dim, 3)
        self.cv2 = ConvBN(dim, dim, 3)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        return x_BCHW + self.cv2(self.cv1(x_BCHW))


class C2f(nn.Module):
    """YOLOv8 C2f: 1x1 conv into two halves, a chain of bottlenecks on one half, concat of all, 1x1 conv.

    Wrapped in an outer residual so a stage of these blocks keeps an identity path.
    """

    def __init__(self, dim: int, *, num_bottlenecks: int = 1) -> None:
        super().__init__()
        hidden = dim // 2
        self.cv1 = ConvBN(dim, 2 * hidden, 1)
        self.bottlenecks = nn.ModuleList(Bottleneck(hidden) for _ in range(num_bottlenecks))
        self.cv2 = ConvBN((2 + num_bottlenecks) * hidden, dim, 1)

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x_BCHW).chunk(2, dim=1))
        for block in self.bottlenecks:
            parts.append(block(parts[-1]))
        return x_BCHW + self.cv2(torch.cat(parts, dim=1))


def _to_windows(x_BCHW: torch.Tensor, window: int) -> torch.Tensor:
    """(B, C, H, W) with H, W multiples of `window` -> (b, N, C) tokens of non-overlapping windows."""
    B, C, H, W = x_BCHW.shape
    x = x_BCHW.reshape(B, C, H // window, window, W // window, window)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(-1, window * window, C)


def _from_windows(x_bNC: torch.Tensor, *, batch: int, height: int, width: int, window: int) -> torch.Tensor:
    """Inverse of `_to_windows`: (b, N, C) -> (B, C, H, W)."""
    C = x_bNC.shape[-1]
    x = x_bNC.reshape(batch, height // window, width // window, window, window, C)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(batch, C, height, width)


class WindowAttentionBlock(nn.Module):
    """Pre-norm transformer layer (attention + MLP) inside non-overlapping windows of a feature map.

    A depthwise 3x3 conv adds position information; maps are padded to a multiple of the window and the
    padded positions are masked out as attention keys.
    """

    def __init__(self, dim: int, *, heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.window = window
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _attend(self, x_bNC: torch.Tensor, keep_b11N: torch.Tensor | None) -> torch.Tensor:
        b, N, C = x_bNC.shape
        qkv = self.qkv(x_bNC).reshape(b, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=keep_b11N)
        return self.proj(out.transpose(1, 2).reshape(b, N, C))

    def forward(self, x_BCHW: torch.Tensor, window: int | None = None) -> torch.Tensor:
        """Attention inside windows of side ``window`` (default: the one built with)."""
        B, C, H, W = x_BCHW.shape
        x_BCHW = x_BCHW + self.pos(x_BCHW)
        ws = self.window if window is None else window
        pad_h, pad_w = (-H) % ws, (-W) % ws
        keep_b11N = None
        if pad_h or pad_w:
            x_BCHW = F.pad(x_BCHW, (0, pad_w, 0, pad_h))
            valid_11HW = F.pad(x_BCHW.new_ones(1, 1, H, W), (0, pad_w, 0, pad_h))
            valid_bN = _to_windows(valid_11HW.expand(B, 1, -1, -1), ws)[..., 0] > 0.5
            keep_b11N = valid_bN[:, None, None, :]
        x_bNC = _to_windows(x_BCHW, ws)
        x_bNC = x_bNC + self._attend(self.norm1(x_bNC), keep_b11N)
        x_bNC = x_bNC + self.mlp(self.norm2(x_bNC))
        out = _from_windows(x_bNC, batch=B, height=H + pad_h, width=W + pad_w, window=ws)
        return out[:, :, :H, :W]


class MultiResolutionAttention(nn.Module):
    """MRA layer: coarse windowed pass on a 2x-pooled map (upsampled back), then a full-resolution
    windowed pass on input + coarse context; both results mixed by a 1x1 conv+BN and added to the skip."""

    def __init__(self, dim: int, *, heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.coarse = WindowAttentionBlock(dim, heads=heads, window=window, mlp_ratio=mlp_ratio)
        self.fine = WindowAttentionBlock(dim, heads=heads, window=window, mlp_ratio=mlp_ratio)
        self.mix = ConvBN(2 * dim, dim, 1, act=False)

    def forward(self, x_BCHW: torch.Tensor, window: int | None = None) -> torch.Tensor:
        size = x_BCHW.shape[-2:]
        coarse_BCHW = self.coarse(F.avg_pool2d(x_BCHW, 2, ceil_mode=True), window)
        coarse_BCHW = F.interpolate(coarse_BCHW, size=size, mode="bilinear", align_corners=False)
        fine_BCHW = self.fine(x_BCHW + coarse_BCHW, window)
        return x_BCHW + self.mix(torch.cat([coarse_BCHW, fine_BCHW], dim=1))


class WindowedStack(nn.Sequential):
    """Attention layers in sequence, each run with the same window side (chosen per input)."""

    def forward(self, x_BCHW: torch.Tensor, window: int | None = None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x_BCHW = layer(x_BCHW, window)
        return x_BCHW


class ERADIO(Student):
    """E-RADIO trunk: dense features at stride 16 with `config.out_dim` channels; summary = spatial mean."""

    def __init__(self, config: ERADIOConfig, *, img_size: int, window_size: int | None = None) -> None:
        """Build `config` for square inputs of side `img_size` (a multiple of 32). With `window_size` None
        (the default) the window follows each input (`window_for_input`; `window_size_for(img_size)` at
        the build size); an explicit `window_size` is used at every resolution."""
        super().__init__()
        if window_size is not None and window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        window = window_size_for(img_size) if window_size is None else window_size
        self.fixed_window = window_size
        w, (d1, d2, d3, d4), heads, mlp = config.width, config.depths, config.heads, config.mlp_ratio
        self.config = config
        self.window_size = window
        self.embed_dim = config.out_dim
        self.num_summary_tokens = 1
        self.img_size = img_size
        self.stem = nn.Sequential(ConvBN(3, w, 3, stride=2), ConvBN(w, w, 3, stride=2))
        self.stage1 = nn.Sequential(*(C2f(w) for _ in range(d1)))
        self.down1 = ConvBN(w, 2 * w, 3, stride=2, act=False)
        self.stage2 = nn.Sequential(*(C2f(2 * w) for _ in range(d2)))
        self.down2 = ConvBN(2 * w, 4 * w, 3, stride=2, act=False)
        mra = [
            MultiResolutionAttention(4 * w, heads=heads[2], window=window, mlp_ratio=mlp) for _ in range(d3)
        ]
        self.stage3 = WindowedStack(*mra)
        self.down3 = ConvBN(4 * w, 8 * w, 3, stride=2, act=False)
        attn = [WindowAttentionBlock(8 * w, heads=heads[3], window=window, mlp_ratio=mlp) for _ in range(d4)]
        self.stage4 = WindowedStack(*attn)
        self.proj3 = ConvBN(4 * w, config.out_dim, 1, act=False)
        self.proj4 = ConvBN(8 * w, config.out_dim, 1, act=False)

    def window_for(self, height: int, width: int) -> int:
        """The attention window an input of this size runs with (checks the size)."""
        window = window_for_input(height, width)
        return window if self.fixed_window is None else self.fixed_window

    def forward(self, x_BCHW: torch.Tensor) -> StudentOutput:
        """Pixels (sides multiples of 32) -> StudentOutput(summary (B, 1, C), features (B, H/16, W/16, C))."""
        window = self.window_for(x_BCHW.shape[-2], x_BCHW.shape[-1])
        x = self.stage2(self.down1(self.stage1(self.stem(x_BCHW))))
        s3_BCHW = self.stage3(self.down2(x), window)
        s4_BCHW = self.stage4(self.down3(s3_BCHW), window)
        up_BCHW = F.interpolate(self.proj4(s4_BCHW), scale_factor=2, mode="bilinear", align_corners=False)
        features_BCHW = self.proj3(s3_BCHW) + up_BCHW
        features_BhwC = features_BCHW.permute(0, 2, 3, 1)
        summary_BKC = features_BhwC.mean(dim=(1, 2))[:, None, :]
        return StudentOutput(summary_BKC=summary_BKC, features_BhwC=features_BhwC)


def build_eradio(size: str, *, img_size: int) -> ERADIO:
    """Build the E-RADIO size `size` (a key of ERADIO_SIZES) for inputs of side `img_size`."""
    if size not in ERADIO_SIZES:
        raise ValueError(f"unknown E-RADIO size {size!r}; valid: {sorted(ERADIO_SIZES)}")
    return ERADIO(ERADIO_SIZES[size], img_size=img_size)
