"""NEFTune (Jain et al., 2023): uniform noise on the input embeddings while training.

noise ~ U(-1, 1) * alpha / sqrt(L * d), with L the *real* (unpadded) length of each sample, not the
padded one, and only on real positions. A forward hook on the embedding module adds it in training
mode only; the weights are never touched, so eval-mode outputs and saved checkpoints are unaffected.
"""

from __future__ import annotations

from typing import Optional

import torch


class NEFTune:
    def __init__(self, embedding: torch.nn.Module, alpha: float = 5.0):
        if alpha <= 0:
            raise ValueError("neft_alpha must be > 0")
        self.alpha = alpha
        self._lengths: Optional[torch.Tensor] = None
        self._handle = embedding.register_forward_hook(self._hook)

    def set_lengths(self, lengths: torch.Tensor) -> None:
        """Real lengths of the rows of the coming batch; micro-batches (pipeline) consume them in order."""
        self._lengths = lengths

    def _hook(self, module, inputs, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        batch, seq, dim = output.shape
        if self._lengths is not None and len(self._lengths) >= batch:
            lengths, self._lengths = self._lengths[:batch], self._lengths[batch:]
        else:
            lengths = torch.full((batch,), seq, device=output.device)
        lengths = lengths.to(output.device).clamp(min=1)
        scale = (self.alpha / torch.sqrt(lengths.float() * dim)).view(batch, 1, 1)
        real = (torch.arange(seq, device=output.device).view(1, seq) < lengths.view(batch, 1)).unsqueeze(-1)
        noise = torch.empty(batch, seq, dim, device=output.device, dtype=torch.float32).uniform_(-1, 1)
        return output + (noise * scale * real).to(output.dtype)

    def remove(self) -> None:
        self._handle.remove()

