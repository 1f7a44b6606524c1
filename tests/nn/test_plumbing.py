"""torch.compile, autocast, DDP (refused when wrapped first; 2 gloo processes) with factorized layers."""

import copy
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from overparam.nn import factors_of, overparameterize

TOL = 1e-10


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, groups=2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 8),
        nn.ReLU(),
        nn.Linear(8, 3),
    ).double()


@pytest.mark.parametrize("order", ["chain", "product"])
def test_torch_compile_fullgraph(gen, order):
    """No graph break (``fullgraph=True`` raises on one); outputs and gradients equal eager."""
    net = overparameterize(_net(), depth=3, modules="all", order=order)
    x = torch.randn(2, 2, 6, 6, generator=gen, dtype=torch.float64)
    eager = copy.deepcopy(net)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.square().sum().backward()
    ref = eager(x)
    ref.square().sum().backward()
    assert (out - ref).abs().max() < TOL
    for a, b in zip(net.parameters(), eager.parameters(), strict=True):
        assert (a.grad - b.grad).abs().max() < TOL


def test_multihead_attention_compiles_without_graph_breaks(gen):
    mha = overparameterize(nn.MultiheadAttention(8, 2, batch_first=True), modules="all")
    q = torch.randn(2, 5, 8, generator=gen)
    explained = torch._dynamo.explain(mha)(q, q, q)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


@pytest.mark.parametrize("order", ["chain", "product"])
def test_autocast_bf16(gen, order):
    net = _net().float()
    x = torch.randn(4, 2, 6, 6, generator=gen)
    reference = net(x).detach()
    overparameterize(net, depth=2, modules="all", order=order)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(f.grad is not None and f.grad.dtype == torch.float32 for f in factors_of(net[2]))
    assert (out.float() - reference).abs().max() < 5e-2 * reference.abs().max()  # bf16 eps 7.8e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_refuses_a_model_already_wrapped_in_ddp_or_fsdp(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        inner = nn.Linear(3, 2)
        wrapped = nn.parallel.DistributedDataParallel(inner)
        with pytest.raises(ValueError, match=r"overparameterize first, then wrap"):
            overparameterize(wrapped)
        with pytest.raises(
            ValueError, match=r"the .module of a DistributedDataParallel/FSDP wrapper"
        ):
            overparameterize(inner)
        with pytest.raises(ValueError, match=r"'0' is DistributedDataParallel"):
            overparameterize(nn.Sequential(wrapped))
        assert type(inner) is nn.Linear  # untouched
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        sharded = fully_shard(nn.Sequential(nn.Linear(3, 4)), mesh=init_device_mesh("cpu", (1,)))
        with pytest.raises(
            ValueError, match=r"'<model>' is FSDPSequential\): overparameterize first"
        ):
            overparameterize(sharded)
    finally:
        dist.destroy_process_group()


_DDP_WORKER = """
import os, sys
import torch, torch.distributed as dist
from torch import nn
from overparam.nn import overparameterize

rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
torch.set_num_threads(1)
dist.init_process_group("gloo", rank=rank, world_size=2)
torch.manual_seed(0)
net = nn.Sequential(
    nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3)
).double()
net = overparameterize(net, depth=3, modules="all")
model = nn.parallel.DistributedDataParallel(net)
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
data = torch.randn(8, 2, 6, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
for _ in range(3):
    opt.zero_grad()
    model(data[4 * rank : 4 * rank + 4]).square().mean().backward()
    opt.step()
torch.save([p.detach() for p in net.parameters()], f"{out}/rank{rank}.pt")
dist.barrier()
sys.stdout.flush()
os._exit(0)  # skip gloo's teardown: under load one rank's exit can abort the other's threads
"""


def test_ddp_two_processes_match_single_process_training(tmp_path):
    """Overparameterize, then wrap: both ranks end equal to one process on the whole batch.

    The ranks are fresh interpreters (not forks of this multi-threaded test process, which can
    deadlock), each bounded by a timeout.
    """
    script = tmp_path / "ddp_worker.py"
    script.write_text(_DDP_WORKER)
    port = str(_free_port())
    workers = [
        subprocess.Popen([sys.executable, str(script), str(rank), port, str(tmp_path)])
        for rank in range(2)
    ]
    try:
        codes = [w.wait(timeout=240) for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert codes == [0, 0]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    net = overparameterize(_net(), depth=3, modules="all")
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    data = torch.randn(8, 2, 6, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for _ in range(3):
        opt.zero_grad()
        F.mse_loss(net(data), torch.zeros(8, 3, dtype=torch.float64), reduction="mean").backward()
        opt.step()
    for a, b, p in zip(ranks[0], ranks[1], net.parameters(), strict=True):
        assert torch.equal(a, b)
        assert (a - p.detach()).abs().max() < 1e-12


def test_pickle_whole_overparameterized_model(gen):
    """``torch.save(model)`` works: the made subclass pickles by reference to the original class."""
    import io

    net = overparameterize(_net(), depth=2, modules="all")
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    x = torch.randn(2, 2, 6, 6, generator=gen, dtype=torch.float64)
    assert torch.equal(loaded(x), net(x)) and type(loaded[2]) is type(net[2])
