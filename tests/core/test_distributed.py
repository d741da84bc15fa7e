"""core/distributed.py: who this process is and the collectives of the training loop; `qdtool train`
under torchrun (2 CPU processes on gloo) trains one adapter, written once. FSDP: test_sharding.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from qdtool.core.distributed import Dist, init_from_env

from torchrun_support import assert_same_run, kill_after_step_4_then_resume, metric, torchrun, train_args

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def _args(model_dir: Path, out: Path, grad_accum: int) -> list[str]:
    return ["train", "--model", str(model_dir), "--data", str(EXAMPLES / "sample_train.json"), "--output-dir", str(out),
            "--max-steps", "3", "--batch-tokens", "512", "--max-seq-len", "512", "--report-to", "none", "--eval-split", "0.2",
            "--lr", "1e-3", "--precision", "fp32", "--lora-dropout", "0", "--grad-accum", str(grad_accum)]


def test_torchrun_two_processes_match_a_single_process_run(tiny_model_dir, tmp_path):
    """2 processes x grad_accum 1 see the same micro-batches per step as 1 process x grad_accum 2,
    so (without dropout) they must learn the same adapter and log the same losses."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    single = tmp_path / "single"
    done = subprocess.run([sys.executable, "-m", "qdtool", *_args(tiny_model_dir, single, 2)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "qdtool",
           *_args(tiny_model_dir, ddp, 1)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-4000:])
    assert done.stdout.count("training summary") == 1  # one process reports

    a, b = load_file(str(single / "adapter" / "adapter_model.safetensors")), load_file(str(ddp / "adapter" / "adapter_model.safetensors"))
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
    rows = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]  # written once, not per process
    for key in ("loss", "eval_loss"):  # finite on both ranks: these are sums over them
        got = [r[key] for r in rows if key in r]
        want = [r[key] for r in reference if key in r]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)
    assert not (ddp / "checkpoints").exists()


def test_resume_gives_each_process_back_its_own_dropout_masks(tiny_model_dir, tmp_path):
    """With LoRA dropout, each process draws its own masks (seed + rank). A resumed two-process run
    continues the same curve only if every process gets its own RNG state back, not the first's."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "reference"
    args = lambda out: train_args(tiny_model_dir, out, "--lora-dropout", "0.3", "--save-steps", "2")  # noqa: E731
    proc = torchrun(["-m", "qdtool", *args(reference)], env)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]

    out = tmp_path / "resumed"
    kill_after_step_4_then_resume(args(out), out, tmp_path, env)
    assert metric(out, "step") == metric(reference, "step")
    assert_same_run(out, reference)


def test_lockstep_pads_every_process_to_the_same_number_of_passes():
    def lockstep(items, rank, world):
        return Dist(rank, world).share(items, lockstep=True)

    items = ["a", "b", "c"]
    assert lockstep(items, 0, 2) == [("a", 1.0), ("c", 1.0)]
    assert lockstep(items, 1, 2) == [("b", 1.0), ("a", 0.0)]
    assert lockstep(["a"], 1, 2) == [("a", 0.0)]  # no micro-batch of its own: one weight-0 pass
    assert lockstep([], 0, 2) == []
    assert [len(lockstep(list(range(n)), r, 4)) for n in (5, 8) for r in range(4)] == [2, 2, 2, 2, 2, 2, 2, 2]
    assert Dist(1, 2).share(items) == [("b", 1.0)]  # without lockstep (DDP): no padding


def test_one_process_is_main_and_every_collective_is_a_no_op(monkeypatch):
    import torch.distributed as dist

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert init_from_env(cuda=False) == Dist(0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "1")
    one = init_from_env(cuda=False)
    assert one == Dist() and not one.enabled and one.main
    assert not dist.is_initialized()  # no process group for one process
    values = [1.5, 2.0]
    assert one.sum(values) is values
    assert one.gather({"x": 1}) == [{"x": 1}]
    param = torch.nn.Parameter(torch.ones(2))
    one.sum_gradients([param])
    assert param.grad is None  # left alone: only a process group needs every rank to send a gradient
    one.barrier()
    assert Dist(1, 2).enabled and not Dist(1, 2).main


_COLLECTIVES = """
import json, sys
import torch
from qdtool.core.distributed import init_from_env

d = init_from_env(cuda=False)
p = torch.nn.Parameter(torch.ones(2))
if d.rank == 1:
    p.grad = torch.tensor([3.0, -1.0])  # rank 0 had no micro-batch in the step: its gradient is None
d.sum_gradients([p])
row = {"who": [d.rank, d.world, d.local_rank, d.enabled, d.main], "sum": d.sum([1.0, 10.0 * (d.rank + 1)]),
       "gather": d.gather({"rank": d.rank}), "grad": p.grad.tolist()}
d.barrier()
with open(f"{sys.argv[1]}/{d.rank}.json", "w") as f:
    json.dump(row, f)
torch.distributed.destroy_process_group()
"""


def test_two_processes_sum_gather_and_sum_gradients(tmp_path):
    """Under torchrun, init_from_env joins the group and the collectives combine both processes."""
    script = tmp_path / "collectives.py"
    script.write_text(_COLLECTIVES)
    proc = torchrun([str(script), str(tmp_path)], {**os.environ, "OMP_NUM_THREADS": "1"})
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, (stdout[-2000:], stderr[-4000:])
    rows = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in (0, 1)]
    assert [r["who"] for r in rows] == [[0, 2, 0, True, True], [1, 2, 1, True, False]]
    for row in rows:
        assert row["sum"] == [2.0, 30.0]
        assert row["gather"] == [{"rank": 0}, {"rank": 1}]
        assert row["grad"] == [3.0, -1.0]  # rank 0 sent zeros instead of nothing
