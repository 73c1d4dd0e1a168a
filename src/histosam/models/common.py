"""Small building blocks shared by the model components (pure ``nn.Module``s, no I/O)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from histosam.models.fused_linear import linear


class LayerNorm2d(nn.Module):
    """Layer norm over the channel axis of a ``B×C×H×W`` tensor (per-pixel statistics), eps 1e-6.

    Parameter names (``weight``, ``bias``) match Meta's SAM checkpoints.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B×C×H×W`` → the same shape, channels-last in memory (one layer-norm kernel over the channels of
        each pixel instead of SAM's nine elementwise passes; the same statistics up to float rounding)."""
        out = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return out.permute(0, 3, 1, 2)


class MLPBlock(nn.Module):
    """``lin1 → activation → lin2`` (the transformer feed-forward block)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if type(self.act) is nn.GELU and self.act.approximate == "none":
            # CPU bf16 inference: packed weights, GELU as the first GEMM's post-op (plain modules otherwise)
            return linear(self.lin2, linear(self.lin1, x, gelu=True))
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """A stack of ``num_layers`` linear layers with ReLU in between (SAM's hypernetwork / IoU head)."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x
