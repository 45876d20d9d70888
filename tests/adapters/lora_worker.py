"""train.py's Trainer in-process under torchrun, then a look at the weights it trained (test_lora.py).

Usage: lora_worker.py OUT.json [train.py flags]. Rank 0 writes which base weights (everything but the
adapters and the trained copies of modules_to_save) differ from --pretrained's files after training.
"""

import json
import os
import sys

import torch
import torch.distributed as dist


def base_weights_changed(model, pretrained: str) -> dict:
    from safetensors.torch import load_file

    original = {}
    for name in os.listdir(pretrained):
        if name.endswith(".safetensors"):
            original.update(load_file(os.path.join(pretrained, name)))
    changed, compared, trainable = [], 0, []
    for name, p in model.named_parameters():
        if "lora_" in name or ".modules_to_save." in name:
            continue
        if p.requires_grad:
            trainable.append(name)
        key = name.replace(".base_layer", "").replace(".original_module", "")
        compared += 1
        if not torch.equal(p.detach().cpu(), original[key].to(p.dtype)):
            changed.append(key)
    return {"changed": changed, "compared": compared, "frozen_but_trainable": trainable}


def main():
    out, argv = sys.argv[1], sys.argv[2:]
    from colossal_hammer.adapters.lora import inner_model
    from colossal_hammer.training.config import parse_config
    from colossal_hammer.training.loop import Trainer

    trainer = Trainer(parse_config(argv))
    trainer.fit()
    if dist.get_rank() == 0:
        result = base_weights_changed(inner_model(trainer.model), trainer.cfg.pretrained)
        with open(out, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()
    # as train.py (training/cli.py): freeing the trainer's DDP reducer can deadlock in gloo's destructor
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
