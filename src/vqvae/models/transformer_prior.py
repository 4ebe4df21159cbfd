"""A decoder-only transformer prior over code maps read in raster order (as in VQGAN's second
stage, Esser et al. 2021, with the 2-D position embeddings of Parmar et al. 2018).

The map's L = h*w codes become one sequence. The input at step t is the code at step t-1,
or, at t = 0, a start token: the class embedding for a conditional prior (the "null" class
under label dropout), else a learned start vector. To each input the embeddings of the row
and the column of the position being predicted are added, so the model knows where it is
in 2-D. Causal self-attention (torch's scaled_dot_product_attention) makes the logits at
step t depend on the codes before t only.

Sampling keeps every layer's keys and values (a KV cache): each step embeds one code and
attends over the cache, instead of re-running the whole sequence per position.
`teacher_forced_logits` runs that same cached path on given codes, which is how the tests
prove it equals the full pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import PriorConfig
from .prior_common import AutoregressivePrior, PriorSpec, check_labels, class_table_size


def gpt2_init(module: nn.Module) -> None:
    """GPT-2's initialisation: small normal weights, zero biases (`model.apply(gpt2_init)`)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


class SelfAttention(nn.Module):
    """Multi-head self-attention; `causal` hides later positions (False: MaskGIT's bidirectional prior)."""

    def __init__(self, width: int, num_heads: int, dropout: float, causal: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.causal = causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.dropout = dropout
        self.out_dropout = nn.Dropout(dropout)

    def _heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        hs = C // self.num_heads
        return tuple(t.view(B, T, self.num_heads, hs).transpose(1, 2) for t in (q, k, v))  # each (B, nh, T, hs)

    def _merge(self, y: torch.Tensor) -> torch.Tensor:
        B, nh, T, hs = y.shape
        return self.out_dropout(self.proj(y.transpose(1, 2).reshape(B, T, nh * hs)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(x)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self._merge(y)

    def step(self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, t: int) -> torch.Tensor:
        """One new token x (B, 1, C) at step t; writes its key and value into the caches
        (B, nh, L, hs) and attends over steps 0..t."""
        q, k, v = self._heads(x)
        cache_k[:, :, t] = k[:, :, 0]
        cache_v[:, :, t] = v[:, :, 0]
        y = F.scaled_dot_product_attention(q, cache_k[:, :, :t + 1], cache_v[:, :, :t + 1])  # (B, nh, 1, hs)
        return self._merge(y)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, width: int, num_heads: int, dropout: float, causal: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, num_heads, dropout, causal)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width),
                                 nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def step(self, x: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor, t: int) -> torch.Tensor:
        x = x + self.attn.step(self.norm1(x), cache_k, cache_v, t)
        return x + self.mlp(self.norm2(x))


class TransformerPrior(AutoregressivePrior):
    def __init__(self, config: PriorConfig, spec: PriorSpec, dropout: float = 0.0):
        super().__init__()
        if config.hidden_channels % config.num_heads:
            raise ValueError(f"num_heads={config.num_heads} must divide hidden_channels={config.hidden_channels}")
        self.config = config
        self.spec = spec
        K, C, size = spec.codebook_size, config.hidden_channels, spec.latent_size
        self.code_embedding = nn.Embedding(K, C)
        classes = class_table_size(spec.num_classes, config.conditional, config.label_dropout)
        # The start token: the class (or null class) of a conditional prior, else one learned vector.
        self.start = nn.Embedding(classes or 1, C)
        self.row_embedding = nn.Embedding(size, C)
        self.col_embedding = nn.Embedding(size, C)
        self.embed_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(C, config.num_heads, dropout) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, K)
        self.apply(gpt2_init)

    def _start_tokens(self, batch: int, labels: torch.Tensor | None, device) -> torch.Tensor:
        index = labels if labels is not None else torch.zeros(batch, dtype=torch.long, device=device)
        return self.start(index)  # (B, C)

    def _positions(self, height: int, width: int) -> torch.Tensor:
        """(h*w, C): the row plus the column embedding of every position, in raster order."""
        return (self.row_embedding.weight[:height, None] + self.col_embedding.weight[None, :width]).reshape(
            height * width, -1)

    def forward(self, codes: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """codes: (B, H, W) int64 -> logits (B, K, H, W); logits at (i, j) see only earlier codes."""
        labels = check_labels(self, labels)
        B, H, W = codes.shape
        sequence = codes.reshape(B, H * W)
        inputs = torch.cat([self._start_tokens(B, labels, codes.device)[:, None],
                            self.code_embedding(sequence[:, :-1])], 1)  # (B, L, C): step t reads code t-1
        x = self.embed_dropout(inputs + self._positions(H, W))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.norm(x))  # (B, L, K)
        return logits.transpose(1, 2).reshape(B, -1, H, W)

    # ------------------------------------------------------------------ cached path
    @torch.no_grad()
    def _autoregress(self, batch: int, height: int, width: int, labels: torch.Tensor | None, choose) -> torch.Tensor:
        """Walk the map in raster order with a KV cache. choose(logits (B, K), i, j) returns the codes
        (B,) placed at (i, j). Returns the codes (B, H, W)."""
        C, nh = self.config.hidden_channels, self.config.num_heads
        device, dtype = self.head.weight.device, self.head.weight.dtype
        L = height * width
        caches = [(torch.zeros(batch, nh, L, C // nh, device=device, dtype=dtype),
                   torch.zeros(batch, nh, L, C // nh, device=device, dtype=dtype)) for _ in self.blocks]
        positions = self._positions(height, width)
        codes = torch.zeros(batch, L, dtype=torch.long, device=device)
        token = self._start_tokens(batch, labels, device)  # (B, C)
        for t in range(L):
            x = (token + positions[t])[:, None]  # (B, 1, C)
            for block, (cache_k, cache_v) in zip(self.blocks, caches):
                x = block.step(x, cache_k, cache_v, t)
            logits = self.head(self.norm(x[:, 0]))  # (B, K)
            codes[:, t] = choose(logits, *divmod(t, width))
            token = self.code_embedding(codes[:, t])
        return codes.view(batch, height, width)
