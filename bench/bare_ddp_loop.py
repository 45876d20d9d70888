"""The floor for bench/train_overhead.py: the shortest honest DDP training loop in plain torch.

Same model (colossal_hammer's "small" config), same random tokens, same AdamW and clipping as
`train.py --plugin ddp --optimizer adamw --mixed_precision fp32`; no Booster, no logging.
Launch: torchrun --nproc_per_node 2 bench/bare_ddp_loop.py STEPS BATCH SEQ OUT.json
"""

import json
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModelForCausalLM, LlamaConfig

from colossal_hammer.model.build import NAMED_CONFIGS


def main(steps: int, batch: int, seq: int, out: str) -> None:
    dist.init_process_group("gloo")
    torch.manual_seed(42)
    config = LlamaConfig(**NAMED_CONFIGS["small"])
    config._attn_implementation = "sdpa"
    model = DistributedDataParallel(AutoModelForCausalLM.from_config(config))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    g = torch.Generator().manual_seed(dist.get_rank())
    times = []
    for _ in range(steps):
        ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g)
        start = time.perf_counter()
        loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        dist.all_reduce(loss.detach())
        times.append(time.perf_counter() - start)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"step_times": times, "tokens_per_step": batch * seq * dist.get_world_size()}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
