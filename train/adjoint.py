"""The completion step with its gradient written by hand, so it exports to ONNX (DESIGN.md 3, option (a)).

`torch.autograd.grad` inside a forward does not export, so `StepModule` writes the backward pass of
L(z) = sum |w * (G(z) - y)| + lam * softplus(-D(G(z)))  (train/reference.py's completion_loss)
explicitly:

* BatchNorm (eval, running statistics) is folded into the preceding layer: s = gamma / sqrt(var + eps)
  scales the layer's output channels in its weight, t = beta - mean * s becomes its bias.
* forward keeps what the backward needs: the pre-activations (ReLU / leaky-ReLU sign masks), G(z), D's logit.
* backward: the transpose of a stride-2 conv is a conv_transpose with the same weight (output_padding 1),
  the transpose of a conv_transpose is a conv with the same weight; tanh' = 1 - x^2;
  d softplus(-l)/dl = -sigmoid(-l); d|r|/dr = sign(r) (0 at 0, as autograd).
* then the seed's projected Nesterov update (train/reference.py momentum_step), K times when unrolled.

Kernels (the torch fast path only; an ONNX export keeps the portable ops above): `FastKernels` lays the
same math out for cuDNN, each choice exact up to the order of float sums, each a lever the H200 profile
(benchmarks/results/gpu-check-h200-profile.txt) named:
* nhwc: weights and activations channels-last; cuDNN's tensor-core kernels work in NHWC, and NCHW tensors
  cost a layout conversion around each convolution (22% of the bf16 step's kernel time there).
* pad8: the two convolutions whose input is the image (D's first; the transpose of G's last, in the
  backward) see it zero-padded to 8 channels: with 3, cuDNN fell back to a non-tensor-core kernel
  (implicit_convolve_sgemm, ~2 ms of the ~18 ms step at batch 2048). Zero channels with zero weights add
  exact zeros.
* masks: each ReLU / leaky-ReLU backward as one aten kernel (threshold_backward / leaky_relu_backward) instead
  of compare, cast, clamp and multiply (elementwise kernels were 20% of the step). Exact in fp32 (0 at a
  pre-activation of 0, as before); in bf16 the leaky slope multiplies in fp32 where the portable op uses
  bf16(0.2) = 0.2002, so ~1 element in 8 differs by 1 ulp.

Precision: the network (folded weights, convs, masks, backward) runs in `dtype` (float32, float16 or
bfloat16); the graph's inputs and outputs, the contextual term |w * (x - y)| with its sign, the loss, the
logit's softplus/sigmoid and the z / v update are float32, so the runtime always feeds float32 and the
latent never accumulates half-precision rounding.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import LRELU_SLOPE, PAD, STRIDE, Discriminator, Generator

_CONV = dict(stride=STRIDE, padding=PAD)
_CONVT = dict(stride=STRIDE, padding=PAD, output_padding=1)


@dataclass(frozen=True)
class FastKernels:
    """How the torch fast path lays the step out for the device (see the module's docstring)."""
    nhwc: bool = False
    pad8: bool = False
    masks: bool = False

    @property
    def memory_format(self):
        return torch.channels_last if self.nhwc else torch.contiguous_format


PORTABLE = FastKernels()  # the ops the ONNX export traces


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = x * s + t (computed in float64)."""
    var = bn.running_var.double()
    s = bn.weight.double() / torch.sqrt(var + bn.eps)
    t = bn.bias.double() - bn.running_mean.double() * s
    return s, t


class _Folded(nn.Module):
    """G and D with BatchNorm folded; weights are buffers in the compute dtype (ONNX initializers)."""

    def __init__(self, G: Generator, D: Discriminator | None, dtype: torch.dtype = torch.float32,
                 storage: torch.dtype | None = None, kernels: FastKernels = PORTABLE):
        super().__init__()
        self.dtype = dtype  # compute dtype
        self.storage = storage or dtype  # initializer dtype (bf16 storage is cast to `dtype` once per call)
        self.kernels = kernels
        cfg = G.cfg
        self.cfg = cfg
        with torch.no_grad():
            # --- G: fc (no bias) + bn0 -> a0 = z @ W^T + b, reshaped [B, C0, 4, 4]
            s, t = _bn_scale_shift(G.bn0)
            c0 = G.bn0.num_features
            self.c0 = c0
            w = G.fc.weight.double() * s.repeat_interleave(16)[:, None]
            self._buf("g_fc_w", w)
            self._buf("g_fc_b", t.repeat_interleave(16))
            n = len(G.deconvs)
            for i, deconv in enumerate(G.deconvs):
                w = deconv.weight.double()  # [cin, cout, k, k]
                if i < n - 1:
                    s, t = _bn_scale_shift(G.bns[i])
                    w = w * s[None, :, None, None]
                    b = t
                else:
                    b = deconv.bias.double()
                self._buf(f"g_w{i}", w)
                self._buf(f"g_b{i}", b)
            self.g_n = n
            if D is not None:
                m = len(D.convs)
                for i, conv in enumerate(D.convs):
                    w = conv.weight.double()  # [cout, cin, k, k]
                    if i == 0:
                        b = conv.bias.double()
                    else:
                        s, t = _bn_scale_shift(D.bns[i - 1])
                        w = w * s[:, None, None, None]
                        b = t
                    self._buf(f"d_w{i}", w)
                    self._buf(f"d_b{i}", b)
                self.d_n = m
                self.d_clast = D.convs[-1].out_channels
                self._buf("d_fc_w", D.fc.weight.double())  # [1, N]
                self._buf("d_fc_b", D.fc.bias.double())  # [1]
            if kernels.pad8:  # the image-input convolutions' weights, zero-padded to 8 input channels
                self.channels, self.padded = cfg.channels, max(8, cfg.channels)
                self._buf("g_wt_pad", self._pad_in(getattr(self, f"g_w{n - 1}").double()))  # [cin, C, k, k]: in = C
                if D is not None:
                    self._buf("d_w0_pad", self._pad_in(D.convs[0].weight.double()))

    def _pad_in(self, w: torch.Tensor) -> torch.Tensor:
        """A [out, C, k, k] weight with zero input channels appended up to self.padded."""
        extra = w.new_zeros(w.shape[0], self.padded - w.shape[1], *w.shape[2:])
        return torch.cat([w, extra], dim=1)

    def _pad_image(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, padded, H, W] with zeros in the new channels, in the kernels' memory format."""
        B, C, H, W = x.shape
        out = x.new_zeros(B, self.padded, H, W).contiguous(memory_format=self.kernels.memory_format)
        out[:, :C] = x
        return out

    def _buf(self, name: str, t: torch.Tensor) -> None:
        t = t.to(self.storage)
        fmt = self.kernels.memory_format if t.dim() == 4 else torch.contiguous_format
        self.register_buffer(name, t.contiguous(memory_format=fmt))

    def _layout(self, t: torch.Tensor) -> torch.Tensor:
        """An activation in the kernels' memory format (a no-op for the portable ops)."""
        return t.contiguous(memory_format=torch.channels_last) if self.kernels.nhwc else t

    def params(self) -> dict[str, torch.Tensor]:
        """The folded weights in the compute dtype (a no-op unless storage differs)."""
        return {k: b.to(self.dtype) for k, b in self.named_buffers()}  # .to keeps the memory format

    # -- forward passes that keep what the backward needs ---------------------------------------------
    def g_forward(self, P: dict, z: torch.Tensor):
        """z in the compute dtype -> (x = G(z), [pre-activations of the ReLU layers])."""
        pres = []
        a = self._layout(F.linear(z, P["g_fc_w"], P["g_fc_b"]).reshape(-1, self.c0, 4, 4))
        pres.append(a)
        h = F.relu(a)
        for i in range(self.g_n):
            a = F.conv_transpose2d(h, P[f"g_w{i}"], P[f"g_b{i}"], **_CONVT)
            if i < self.g_n - 1:
                pres.append(a)
                h = F.relu(a)
        return torch.tanh(a), pres

    def d_forward(self, P: dict, x: torch.Tensor):
        """x -> (logit [B], [pre-activations of the leaky-ReLU layers])."""
        pres = []
        h = x
        for i in range(self.d_n):
            if i == 0 and self.kernels.pad8:
                a = F.conv2d(self._pad_image(h), P["d_w0_pad"], P["d_b0"], **_CONV)
            else:
                a = F.conv2d(h, P[f"d_w{i}"], P[f"d_b{i}"], **_CONV)
            pres.append(a)
            h = F.leaky_relu(a, LRELU_SLOPE)
        logit = F.linear(h.reshape(-1, self.d_clast * 16), P["d_fc_w"], P["d_fc_b"])
        return logit.reshape(-1), pres

    # -- the transposes --------------------------------------------------------------------------------
    def d_backward(self, P: dict, g_logit: torch.Tensor, pres: list[torch.Tensor]) -> torch.Tensor:
        """dL/dx given dL/dlogit [B] (compute dtype)."""
        g = self._layout((g_logit[:, None] * P["d_fc_w"]).reshape(-1, self.d_clast, 4, 4))
        for i in reversed(range(self.d_n)):
            if self.kernels.masks:
                g = torch.ops.aten.leaky_relu_backward(g, pres[i], LRELU_SLOPE, False)
                g = F.conv_transpose2d(g, P[f"d_w{i}"], **_CONVT)
                continue
            # leaky ReLU: slope 1 where the pre-activation is > 0, else 0.2 (autograd's convention at 0).
            # A multiply by a 0/1 mask, not torch.where: ONNX Runtime's CPU Where is not vectorized and
            # took 11% of a step (batch 64), Greater/Cast/Mul take 2%; the values are identical.
            g = g * (pres[i] > 0).to(g.dtype).clamp_min(LRELU_SLOPE)  # exactly 1, or 0.2 as the dtype rounds it
            g = F.conv_transpose2d(g, P[f"d_w{i}"], **_CONVT)
        return g

    def g_backward(self, P: dict, g_x: torch.Tensor, x: torch.Tensor, pres: list[torch.Tensor]) -> torch.Tensor:
        """dL/dz given dL/dx (compute dtype)."""
        # tanh' = 1 - x^2 in float32: near |x| = 1 a 16-bit x leaves few correct digits in 1 - x^2
        g = (g_x.float() * (1 - x.float() * x.float())).to(g_x.dtype)
        for i in reversed(range(self.g_n)):
            if i == self.g_n - 1 and self.kernels.pad8:
                g = F.conv2d(self._pad_image(g), P["g_wt_pad"], **_CONV)
            else:
                g = F.conv2d(g, P[f"g_w{i}"], **_CONV)
            if self.kernels.masks:
                g = torch.ops.aten.threshold_backward(g, pres[i], 0)
            else:
                g = g * (pres[i] > 0).to(g.dtype)  # ReLU mask of the layer below (a multiply: see d_backward)
        g = g.reshape(-1, self.c0 * 16)
        return g @ P["g_fc_w"]  # transpose of the linear layer


#: precision name -> (compute dtype, weight storage dtype)
PRECISIONS = {
    "fp32": (torch.float32, torch.float32),
    "fp16": (torch.float16, torch.float16),
    # bf16: weights stored as bf16 (half the file), computed in fp32: ONNX Conv/ConvTranspose accept
    # bf16 only from opset 22 and ONNX Runtime's CPU provider has no bf16 convolution kernels.
    "bf16": (torch.float32, torch.bfloat16),
}


def _dtypes(precision: str) -> tuple[torch.dtype, torch.dtype]:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


class GeneratorModule(nn.Module):
    """G(z) with BatchNorm folded: z [B, zdim] float32 -> image [B, C, H, W] float32 in [-1, 1]."""

    def __init__(self, G: Generator, precision: str = "fp32"):
        super().__init__()
        self.net = _Folded(G, None, *_dtypes(precision))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x, _ = self.net.g_forward(self.net.params(), z.to(self.net.dtype))
        return x.float()


class StepModule(nn.Module):
    """K projected-momentum steps of the completion search, gradient by hand.

    forward(z [B, zdim], v [B, zdim], y [B, C, H, W], w [B, 1 or C, H, W], lr, momentum, lam: 0-d)
      -> z_out, v_out, loss [B] (each image's loss at the input z, i.e. before the first step).
    All inputs and outputs float32.
    """

    def __init__(self, G: Generator, D: Discriminator, unroll: int = 1, precision: str = "fp32",
                 compute_dtype: torch.dtype | None = None, kernels: FastKernels = PORTABLE):
        """compute_dtype, when given, overrides `precision`: the network computes in it and its folded
        weights are stored in it (no cast per call). The torch backend's fast path uses it for true
        bf16 compute, which no ONNX precision does (see PRECISIONS), and `kernels`; the ONNX export
        passes neither."""
        super().__init__()
        if unroll < 1:
            raise ValueError(f"unroll must be >= 1, got {unroll}")
        dtypes = (compute_dtype, compute_dtype) if compute_dtype is not None else _dtypes(precision)
        self.net = _Folded(G, D, *dtypes, kernels=kernels)
        self.unroll = unroll

    def prepare(self, t: torch.Tensor) -> torch.Tensor:
        """y or w in the kernels' memory format, done once per batch by a caller that keeps them (the
        elementwise terms then read matching strides); forward accepts either layout."""
        return self.net._layout(t)

    def loss_and_grad(self, P, z, y, w, lam, with_loss: bool = True):
        """Per-image loss [B] (float32, or None) and dL/dz [B, zdim] (float32). P = self.net.params()."""
        net, dt = self.net, self.net.dtype
        x, g_pres = net.g_forward(P, z.to(dt))
        logit, d_pres = net.d_forward(P, x)
        x32, logit32 = x.float(), logit.float()
        r = w * (x32 - y)
        g_x = w * torch.sign(r)  # d|r|/dr * dr/dx (sign(0) = 0, as autograd)
        g_logit = -lam * torch.sigmoid(-logit32)  # d(lam * softplus(-l))/dl
        g_x = g_x.to(dt) + net.d_backward(P, g_logit.to(dt), d_pres)
        grad = net.g_backward(P, g_x, x, g_pres).float()
        loss = None
        if with_loss:
            loss = r.abs().sum(dim=(1, 2, 3)) + lam * F.softplus(-logit32)
        return loss, grad

    def forward(self, z, v, y, w, lr, momentum, lam):
        P = self.net.params()  # shared by all K steps: one initializer per weight in the graph
        loss = None
        for k in range(self.unroll):
            l_k, grad = self.loss_and_grad(P, z, y, w, lam, with_loss=(k == 0))
            if k == 0:
                loss = l_k
            v_new = momentum * v - lr * grad
            z = torch.clamp(z - momentum * v + (1 + momentum) * v_new, -1.0, 1.0)
            v = v_new
        return z, v, loss
