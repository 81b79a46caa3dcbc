"""Modified 3D U-Net (Isensee et al. 2018) as implemented by ivadomed's ``Modified3DUNet``.

Tensors are (N, C, S, A, R): batch, channels, then the working-grid axes (inferior->superior,
posterior->anterior, left->right). Four stride-2 downsamplings: every spatial size must be a
multiple of 16. The network ends with a sigmoid, so the ONNX graph outputs probabilities.

Faithful to ivadomed (see shared/reference/ivadomed-cascade.md §7): bias-free convolutions,
instance norm without affine parameters, LeakyReLU(0.01), Dropout3d, nearest upsampling, the
context modules of levels 2-5 applying the *same* conv twice, and deep supervision summed into
the output. One departure: no background channel is predicted and discarded (ivadomed's K+1
outputs with class 0 sliced off); the network predicts exactly ``n_classes`` sigmoids.

:func:`inference_form` rewrites a trained network into an equivalent one that runs faster in
ONNX Runtime (exported graphs use it): each nearest x2 upsampling followed by a 3x3x3
convolution is computed at the lower resolution (a transposed convolution on the two coarse
levels, a sub-pixel convolution on the two fine ones), and the remaining upsamplings become
reshapes, so no ``Resize`` node is left.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

LEAK = 0.01


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=False)


def _norm(c: int) -> nn.InstanceNorm3d:
    return nn.InstanceNorm3d(c, affine=False, track_running_stats=False)


def _norm_lrelu_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_norm(cin), nn.LeakyReLU(LEAK), _conv(cin, cout))


def _conv_norm_lrelu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(_conv(cin, cout), _norm(cout), nn.LeakyReLU(LEAK))


def _up_block(cin: int, cout: int) -> nn.Sequential:
    """IN -> LReLU -> x2 nearest upsampling -> conv3 -> IN -> LReLU."""
    return nn.Sequential(
        _norm(cin), nn.LeakyReLU(LEAK), nn.Upsample(scale_factor=2, mode="nearest"),
        _conv(cin, cout), _norm(cout), nn.LeakyReLU(LEAK),
    )


class _ContextLevel(nn.Module):
    """Levels 2-5: strided conv, then a shared norm-lrelu-conv applied twice around dropout."""

    def __init__(self, cin: int, cout: int, dropout: float, last: bool = False):
        super().__init__()
        self.down = _conv(cin, cout, stride=2)
        self.nlc = _norm_lrelu_conv(cout, cout)
        self.drop = nn.Dropout3d(dropout)
        self.post = nn.Identity() if last else nn.Sequential(_norm(cout), nn.LeakyReLU(LEAK))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.down(x)
        out = self.nlc(self.drop(self.nlc(r))) + r
        return self.post(out)


OUTPUTS = ("sigmoid", "exclusive")


class Modified3DUNet(nn.Module):
    """(N, in_channels, S, A, R) float32 -> (N, n_classes, S, A, R) probabilities.

    ``output="sigmoid"``: one independent sigmoid per class, deep supervision summed into the
    output (ivadomed). ``output="exclusive"`` (segmenter 2): ``n_classes`` softmax logits over
    background and the exclusive lesion classes, deep-supervision heads trained with their own
    losses (:meth:`logits_ds`) and absent from the inference graph; :meth:`forward` returns the
    runtime's probabilities: the lesion classes, then their union ``1 - p(background)``.
    ``head_filters`` (default ``2 * base_filters``) sets the width of the last full-resolution conv.
    """

    def __init__(self, in_channels: int = 1, n_classes: int = 1, base_filters: int = 8, dropout: float = 0.3,
                 output: str = "sigmoid", head_filters: int | None = None):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
        self.output = output
        f = base_filters
        h = head_filters or 2 * f
        self.lrelu = nn.LeakyReLU(LEAK)
        self.drop = nn.Dropout3d(dropout)
        # Level 1 context
        self.c1_1 = _conv(in_channels, f)
        self.c1_2 = _conv(f, f)
        self.c1_3 = _conv(f, f)
        self.c1_norm = _norm(f)
        self.c2 = _ContextLevel(f, 2 * f, dropout)
        self.c3 = _ContextLevel(2 * f, 4 * f, dropout)
        self.c4 = _ContextLevel(4 * f, 8 * f, dropout)
        self.c5 = _ContextLevel(8 * f, 16 * f, dropout, last=True)
        # Localization pathway
        self.l0_up = _up_block(16 * f, 8 * f)
        self.l0_1x1 = nn.Sequential(_conv(8 * f, 8 * f, k=1), _norm(8 * f), nn.LeakyReLU(LEAK))
        self.l1_conv = _conv_norm_lrelu(16 * f, 16 * f)
        self.l1_1x1 = _conv(16 * f, 8 * f, k=1)
        self.l1_up = _up_block(8 * f, 4 * f)
        self.l2_conv = _conv_norm_lrelu(8 * f, 8 * f)
        self.l2_1x1 = _conv(8 * f, 4 * f, k=1)
        self.l2_up = _up_block(4 * f, 2 * f)
        self.l3_conv = _conv_norm_lrelu(4 * f, 4 * f)
        self.l3_1x1 = _conv(4 * f, 2 * f, k=1)
        self.l3_up = _up_block(2 * f, f)
        self.l4_conv = _conv_norm_lrelu(2 * f, h)
        self.l4_out = _conv(h, n_classes, k=1)
        # Deep supervision heads (1/4 and 1/2 resolution)
        self.ds2 = _conv(8 * f, n_classes, k=1)
        self.ds3 = _conv(4 * f, n_classes, k=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")

    def _level1(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.c1_1(x)
        out = self.c1_3(self.lrelu(self.drop(self.c1_2(self.lrelu(r))))) + r
        context = self.lrelu(out)
        return self.lrelu(self.c1_norm(out)), context

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation output (N, n_classes, S, A, R); for losses that want logits."""
        full, half, quarter = self.logits_ds(x)
        if self.output == "exclusive":
            return full
        return full + self.up(self.up(quarter) + half)

    def logits_ds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at full, 1/2 and 1/4 resolution (the deep-supervision heads)."""
        out, ctx1 = self._level1(x)
        ctx2 = self.c2(out)
        ctx3 = self.c3(ctx2)
        ctx4 = self.c4(ctx3)
        out = self.l0_1x1(self.l0_up(self.c5(ctx4)))
        out = self.l1_up(self.l1_1x1(self.l1_conv(torch.cat([out, ctx4], dim=1))))
        ds2 = self.l2_conv(torch.cat([out, ctx3], dim=1))
        out = self.l2_up(self.l2_1x1(ds2))
        ds3 = self.l3_conv(torch.cat([out, ctx2], dim=1))
        out = self.l3_up(self.l3_1x1(ds3))
        out = self.l4_out(self.l4_conv(torch.cat([ctx1, out], dim=1)))
        return out, self.ds3(ds3), self.ds2(ds2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.output == "exclusive":
            p = torch.softmax(self.logits(x), dim=1)
            return torch.cat([p[:, 1:], 1.0 - p[:, :1]], dim=1)
        return torch.sigmoid(self.logits(x))


class _Upsample2(nn.Module):
    """Nearest x2 upsampling of (N, C, D, H, W) by reshape and broadcast (exact, no Resize op)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, d, h, w = x.shape
        x = x[:, :, :, None, :, None, :, None].expand(n, c, d, 2, h, 2, w, 2)
        return x.reshape(n, c, 2 * d, 2 * h, 2 * w)


# Tap k (0..3) of the transposed convolution sums these taps (-1, 0, +1) of the 3-tap convolution:
# output 2m reads inputs m-1 (tap -1) and m (taps 0, +1); output 2m+1 reads m (taps -1, 0) and m+1 (+1).
_FOLD = torch.tensor([[0, 0, 1], [0, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.float64)


def _fold_upsample_conv(conv: nn.Conv3d) -> nn.ConvTranspose3d:
    """The ConvTranspose3d(k=4, stride=2, padding=1) equal to nearest x2 upsampling then ``conv``
    (3x3x3, padding 1, no bias): 8 instead of 27 multiply-adds per output voxel and channel pair."""
    w = conv.weight.detach().double()  # (out, in, 3, 3, 3)
    k = torch.einsum("ai,bj,ck,oxijk->xoabc", _FOLD, _FOLD, _FOLD, w)  # (in, out, 4, 4, 4)
    folded = nn.ConvTranspose3d(conv.in_channels, conv.out_channels, 4, stride=2, padding=1, bias=False)
    folded.weight.data = k.to(conv.weight.dtype).contiguous()
    return folded


# Phase p (0, 1) of a x2 nearest upsampling followed by a 3-tap convolution, as a 3-tap convolution
# of the coarse input: row = coarse offset (-1, 0, +1), column = fine tap (-1, 0, +1). Output 2m
# reads coarse m-1 (tap -1) and m (taps 0, +1); output 2m+1 reads m (taps -1, 0) and m+1 (tap +1).
_PHASE = torch.tensor([[[1, 0, 0], [0, 1, 1], [0, 0, 0]],
                       [[0, 0, 0], [1, 1, 0], [0, 0, 1]]], dtype=torch.float64)


class _SubpixelUp(nn.Module):
    """Nearest x2 upsampling then ``conv`` (3x3x3, padding 1, no bias), computed at the coarse
    resolution: one 3x3x3 convolution to 8 phase channels per output channel, then the phases
    are interleaved one axis at a time by reshapes and transposes (cheaper in ONNX Runtime than a
    transposed convolution's scatter on the fine levels; the weights grow 8x, so coarse levels
    keep :func:`_fold_upsample_conv`)."""

    def __init__(self, conv: nn.Conv3d):
        super().__init__()
        self.out_channels = conv.out_channels
        w = conv.weight.detach().double()  # (out, in, 3, 3, 3)
        k = torch.einsum("pai,qbj,rck,oxijk->opqrxabc", _PHASE, _PHASE, _PHASE, w)  # (out, 2, 2, 2, in, 3, 3, 3)
        self.conv = nn.Conv3d(conv.in_channels, 8 * conv.out_channels, 3, padding=1, bias=False)
        self.conv.weight.data = k.reshape(8 * conv.out_channels, conv.in_channels, 3, 3, 3).to(conv.weight.dtype).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.out_channels  # conv channel o * 8 + 4 * phase_d + 2 * phase_h + phase_w
        y = self.conv(x).unflatten(1, (4 * c, 2)).permute(0, 1, 3, 4, 5, 2).flatten(4)  # (N, 4c, D, H, 2W)
        y = y.unflatten(1, (2 * c, 2)).permute(0, 1, 3, 4, 2, 5).flatten(3, 4)  # (N, 2c, D, 2H, 2W)
        return y.unflatten(1, (c, 2)).permute(0, 1, 3, 2, 4, 5).flatten(2, 3)  # (N, c, 2D, 2H, 2W)


def inference_form(model: Modified3DUNet) -> Modified3DUNet:
    """A copy of ``model`` (eval mode) that computes the same function with fewer operations."""
    fast = copy.deepcopy(model).cpu().eval()
    for block in (fast.l0_up, fast.l1_up):  # IN, LReLU, Upsample, conv, ...
        block[2], block[3] = nn.Identity(), _fold_upsample_conv(block[3])
    for block in (fast.l2_up, fast.l3_up):
        block[2], block[3] = nn.Identity(), _SubpixelUp(block[3])
    fast.up = _Upsample2()
    return fast


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
