"""Random-token samples for `--benchmark`: no dataset, no tokenizer, fully determined by the seed.

Rows have the prepared datasets' shape and the dataset answers the bucket questions of
`BucketSampler` (one bucket), so benchmark runs go through the same sampler and collator."""

import torch
from torch.utils.data import Dataset


class RandomTokenDataset(Dataset):
    num_buckets = 1

    def __init__(self, num_samples: int, max_length: int, vocab_size: int, seed: int = 42):
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(0, vocab_size, (num_samples, max_length), generator=generator)

    def __len__(self) -> int:
        return self.input_ids.size(0)

    def __getitem__(self, idx: int) -> dict:
        ids = self.input_ids[idx].tolist()
        return {"input_ids": ids, "labels": ids, "doc_lengths": [len(ids)], "num_padding": 0}

    def bucket_ranges(self, k: int):
        return [("random", range(len(self)))]
