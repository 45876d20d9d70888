"""One forward of a fixed packed batch through a boosted plugin (run under torchrun by test_doc_attention).

Usage: doc_attention_worker.py OUT.json padded|full [train.py flags]. The model and its document attention come from
the same `make_model` train.py uses; rank 0 writes every rank's loss and which ranks the training loop counts.
"""

import json
import os
import sys

import torch
import torch.distributed as dist


ROWS = {"padded": ([9, 14, 5], [20, 12]), "full": ([9, 14, 9], [20, 12])}


def packed_batch(vocab_size: int, rows: str = "padded", seed: int = 7) -> dict:
    """Two rows of 32 tokens holding several documents each; "padded" ends row 0 with 4 padding tokens."""
    from colossal_hammer.data.loader import PackedCollator

    g = torch.Generator().manual_seed(seed)
    out = []
    for lengths in ROWS[rows]:
        ids = torch.randint(3, vocab_size, (sum(lengths),), generator=g).tolist()
        padding = 32 - len(ids)
        out.append({"input_ids": ids + [0] * padding, "labels": ids + [-100] * padding,
                     "doc_lengths": lengths, "num_padding": padding})
    return PackedCollator(pad_id=0)(out)


def main(out: str, rows: str, argv: list) -> None:
    from colossal_hammer import compat

    compat.activate()
    import colossalai
    from colossalai.booster import Booster

    from colossal_hammer.model.build import DTYPES
    from colossal_hammer.training.components import make_model
    from colossal_hammer.training.config import parse_config
    from colossal_hammer.training.plugins import build_plugin, parallel_layout_of

    cfg = parse_config(argv + ["--benchmark"])
    colossalai.launch_from_torch(seed=cfg.seed, verbose=False)
    plugin = build_plugin(cfg)
    layout = parallel_layout_of(plugin)
    booster = Booster(plugin=plugin)
    model = make_model(cfg, DTYPES[cfg.mixed_precision], None)
    model, *_ = booster.boost(model)
    batch = packed_batch(model.unwrap().config.vocab_size, rows)
    with torch.no_grad():
        if layout.pipeline:
            out_ = booster.execute_pipeline(iter([batch]), model, criterion=lambda outputs, inputs: outputs.loss,
                                            return_loss=True)
            loss = out_["loss"]
        else:
            loss = model(**batch).loss
    # Every rank's loss (None: this pipeline stage computes none) and whether the loop counts it.
    mine = [float(loss) if loss is not None else None, bool(layout.loss_owner)]
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if dist.get_rank() == 0:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"losses": [x[0] for x in everyone], "owners": [x[1] for x in everyone]}, f)
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)  # as train.py (training/cli.py): freeing a DDP reducer can deadlock in gloo's destructor


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
