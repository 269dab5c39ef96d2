"""Conv4, the few-shot image classifier of the MAML paper, and its BatchNorm policy.

Finn, Abbeel, Levine (2017), Section 5.2, following Vinyals et al. (2016), "Matching Networks":

    4 x [ 3x3 conv (width filters, padding 1) -> BatchNorm -> ReLU -> 2x2 max-pool ]  ->  linear head (n_way)

On 28x28 Omniglot images the four pools take the feature map 28 -> 14 -> 7 -> 3 -> 1, so the head sees
`width` features, the paper's 64-dimensional last hidden layer.

Downsampling, `downsample=` one of:
- "maxpool" (default): the block above, the Conv4 of Matching Networks that later few-shot papers
  compare against, and the paper's MiniImagenet network. 28 -> 14 -> 7 -> 3 -> 1: the head sees `width`
  features.
- "stride": the paper's *Omniglot* network, which replaced each max-pool by a stride-2 convolution
  (conv(stride 2) -> BatchNorm -> ReLU). 28 -> 14 -> 7 -> 4 -> 2: the head sees 4 * width features. Its
  convolutions compute maps 4x smaller (a stride-2 convolution outputs the halved map directly, where
  max-pool needs the full-size one first), so a meta-step costs less; the Omniglot results and shipped
  checkpoints of fewshot.py use it for that reason (and because it is the paper's choice). To measure
  it, run this with downsample='stride', then 'maxpool':

      python -m timeit -s "import torch, mamlkit.models.conv4 as c; x = torch.randn(80, 1, 28, 28); m = c.make_conv4(5, downsample='stride')" "m(x).sum().backward()"

BatchNorm policy: batch statistics at train AND test time, as the paper's code (`track_running_stats=False`).

    BN(h) = γ (h − mean_batch(h)) / sqrt(var_batch(h) + ε) + β_bn     (statistics over the batch and pixels)

- Every forward pass normalizes with the statistics of the batch it is given: the support set during
  the inner loop, the query set when θ' is judged. This is *transductive*: a query image's prediction
  depends on the other query images of its batch (they share the statistics). It is what the paper
  reports, and the reason its query batches hold n_way * q_query images at once.
- γ and β_bn are ordinary parameters: they are meta-learned and adapted in the inner loop like the
  convolution weights.
- No running statistics exist, so there is no buffer to update: `mamlkit.checks.check_model` accepts the
  model in training mode, and `model.eval()` changes nothing.

The alternatives, and why they are not the default:
- Running statistics (`track_running_stats=True`): the forward pass would *write* buffers, which a pure
  function of θ cannot do, so mamlkit rejects such a model in training mode. In eval mode it uses fixed
  running statistics, which mix every task of meta-training and fit no single task.
- Per-example evaluation (one query image at a time): with a batch of one, each layer normalizes with
  the statistics of a single image (in the last block, of its 9 or 4 pixels), far from the batch
  statistics θ was meta-trained with. Use the support set's statistics instead: normalize
  [support; one query image] together and keep the query row
  (`FewShotClassifier.classify(..., transductive=False)` in fewshot.py). Non-transductive: a query
  image's label no longer depends on the other query images.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

DOWNSAMPLES = ("maxpool", "stride")


class BatchNorm(nn.Module):
    """BatchNorm with batch statistics only, written with plain tensor ops.

    Numerically `nn.BatchNorm2d(channels, track_running_stats=False)` (same parameters `weight` = γ and
    `bias` = β_bn, same state_dict keys), but differentiable twice *under vmap*: torch's fused batch-norm
    kernel gives a wrong second-order meta-gradient when a `torch.func.grad` is vmapped through it
    (torch 2.13; notebook 06 shows it). mamlkit vmaps only the forward pass, so it is exact with either
    BatchNorm; this one is exact even under a vmapped `torch.func.grad`, and a learner can read it.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))  # γ
        self.bias = nn.Parameter(torch.zeros(channels))  # β_bn
        self.eps = eps

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: (batch, channels, H, W)
        mean = h.mean(dim=(0, 2, 3), keepdim=True)  # (1, channels, 1, 1): over the batch and the pixels
        centered = h - mean  # (batch, channels, H, W)
        # biased variance, as BatchNorm normalizes. Written as a mean of squares rather than h.var(...):
        # the same number, but torch's CPU var over several non-adjacent dims (0, 2, 3) takes a slow
        # generic path, while a mean is one fast reduction. To measure it:
        # python -m timeit -s "import torch; h = torch.randn(32, 64, 14, 14)" "h.var(dim=(0, 2, 3))"
        # python -m timeit -s "import torch; h = torch.randn(32, 64, 14, 14)" "c = h - h.mean(dim=(0, 2, 3), keepdim=True); (c * c).mean(dim=(0, 2, 3))"
        var = (centered * centered).mean(dim=(0, 2, 3), keepdim=True)  # (1, channels, 1, 1)
        scale = torch.rsqrt(var + self.eps) * self.weight[:, None, None]  # γ / sqrt(var + ε), per channel
        return centered * scale + self.bias[:, None, None]


def conv_block(in_channels: int, out_channels: int, downsample: str = "maxpool") -> nn.Sequential:
    """3x3 conv -> BatchNorm (batch statistics) -> ReLU, halving the size by a 2x2 max-pool or a stride of 2."""
    stride = 2 if downsample == "stride" else 1  # padding 1: stride 1 keeps the size, stride 2 halves it (rounding up)
    layers = OrderedDict(
        conv=nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1),
        norm=BatchNorm(out_channels),  # batch statistics at train and test time; vmap-safe (see BatchNorm)
        relu=nn.ReLU(),
    )
    if downsample == "maxpool":
        layers["pool"] = nn.MaxPool2d(2)  # halves the size, rounding down
    return nn.Sequential(layers)


def make_conv4(n_way: int, *, width: int = 64, in_channels: int = 1, image_size: int = 28,
               downsample: str = "maxpool") -> nn.Sequential:
    """The paper's Conv4: four conv blocks of `width` filters and a linear head with `n_way` logits.

    Input (batch, in_channels, image_size, image_size), output (batch, n_way) logits. Parameter names
    read like the architecture: `block1.conv.weight`, `block1.norm.weight` (γ), ..., `head.weight`.
    """
    for name, v in (("n_way", n_way), ("width", width), ("in_channels", in_channels), ("image_size", image_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if n_way < 2:
        raise ValueError(f"n_way: expected at least 2 classes per task, got {n_way}")
    if downsample not in DOWNSAMPLES:
        raise ValueError(f"downsample: expected one of {DOWNSAMPLES}, got {downsample!r}")
    if image_size < 16:
        raise ValueError(f"image_size: four halvings need images of at least 16x16 pixels, got {image_size}")
    size = image_size
    for _ in range(4):
        # max-pool rounds down (28 -> 14 -> 7 -> 3 -> 1), a stride-2 conv rounds up (28 -> 14 -> 7 -> 4 -> 2)
        size = size // 2 if downsample == "maxpool" else (size + 1) // 2
    return nn.Sequential(OrderedDict(
        block1=conv_block(in_channels, width, downsample),
        block2=conv_block(width, width, downsample),
        block3=conv_block(width, width, downsample),
        block4=conv_block(width, width, downsample),
        flatten=nn.Flatten(),  # (batch, width, size, size) -> (batch, width*size*size)
        head=nn.Linear(width * size * size, n_way),
    ))
