"""Gemini's chunks shard for real on a CPU-only host: each of 2 gloo ranks keeps half a chunk in compute
memory, gathers the whole of it for compute and gives it back afterwards, and a working chunk takes its
fp32 master shard at once (optim_update). Colossal-AI's own ChunkManager, driven directly."""

import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        _check_chunks(rank)
    finally:
        dist.destroy_process_group()


def _check_chunks(rank: int) -> None:
    from colossal_hammer import compat

    assert compat.activate()
    from colossalai.zero.gemini.chunk import ChunkManager

    group = dist.group.WORLD
    # chunk_size 10 elements: 4 tensors of 3 fill chunk 0 up to 9 and open chunk 1 for the 4th
    manager = ChunkManager({WORLD: dict(chunk_size=10, keep_gathered=False)}, init_device=torch.device("cpu"))
    originals = [torch.arange(3, dtype=torch.bfloat16) + 10 * i for i in range(4)]
    params = [o.clone() for o in originals]
    expected = [o.float() + 0.25 for o in originals]  # what an optimizer step would have produced
    masters = [e.clone() for e in expected]
    for p, m in zip(params, masters):
        manager.register_tensor(p, "fp16_param", WORLD, group)
        manager.register_tensor(m, "fp32_param", WORLD, group)
    manager.close_all_groups()

    chunks = manager.get_chunks(params)
    assert len(chunks) == 2
    for chunk in chunks:
        # sharded, resident in compute memory, the gathered buffer freed
        assert not chunk.is_gathered and chunk.cpu_shard is None
        assert chunk.cuda_shard.numel() == 5 and chunk.shard_begin == 5 * rank
        assert chunk.cuda_global_chunk.untyped_storage().nbytes() == 0
        assert chunk.device_type == "cuda"  # "in compute memory" in the words Gemini's callers compare

    first = chunks[0]
    manager.access_chunk(first)  # upstream asserted `cuda_shard is not None` here on CPU
    assert first.is_gathered
    for p, o in zip(params[:3], originals[:3]):
        assert torch.equal(p, o), "gathering lost or mixed up data"
    for tensor in first.get_tensors():  # compute done: the tensors may be released
        manager.trans_tensor_state(tensor, first.tensors_info[tensor].state)
    manager.release_chunk(first)
    assert not first.is_gathered and first.cuda_shard.numel() == 5

    for chunk16, chunk32 in zip(chunks, manager.get_chunks(masters)):
        chunk32.init_pair(chunk16)
        chunk16.optim_update()  # the fp32 master shard goes to the working shard at once
        assert chunk16.optim_sync_flag
        assert torch.equal(chunk16.cuda_shard, chunk32.cuda_shard.to(torch.bfloat16))
    manager.access_chunk(first)
    for p, e in zip(params[:3], expected[:3]):
        assert torch.equal(p, e.to(torch.bfloat16))


def test_two_ranks_shard_gather_release_and_take_masters():
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD, join=True)
