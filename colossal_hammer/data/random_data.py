"""Random-token samples for `--benchmark`: no dataset, no tokenizer, fully determined by the seed."""

import torch
from torch.utils.data import Dataset


class RandomTokenDataset(Dataset):
    def __init__(self, num_samples: int, max_length: int, vocab_size: int, seed: int = 42):
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(0, vocab_size, (num_samples, max_length), generator=generator)

    def __len__(self) -> int:
        return self.input_ids.size(0)

    def __getitem__(self, idx: int) -> dict:
        ids = self.input_ids[idx]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
