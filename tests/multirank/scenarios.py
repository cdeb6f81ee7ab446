"""What each rank runs in the multi-rank tests (launched by harness.run_ranks).

    scenarios.py init WORKDIR                 1 rank : glm-tiny weights (randomised biases/LNs too),
                                                       TP1 logits of every input, EGS gradients
    scenarios.py tp_equivalence WORKDIR       4 ranks: logits + gathered gradients at TP 1, 2, 4
    scenarios.py train_layout WORKDIR NAME KEY=VALUE...: 4 optimizer steps from the same weights
    scenarios.py data_consistency WORKDIR     4 ranks: which samples each rank reads (data_run.yaml)

Inputs come from WORKDIR/inputs.pt (written by the test), results go to WORKDIR/*.pt / *.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Dict, List

import torch

from megatron_glm.config.loader import load_run_config
from megatron_glm.config.validate import validate
from megatron_glm.runtime.distributed import destroy_distributed, discover_world, initialize_distributed

TINY_OVERRIDES = ["model.seq_length=64"]
GLOBAL_BATCH = 8
SEQ_LENGTH = 64
TRAIN_STEPS = 4


def _run_config(*overrides: str):
    return load_run_config("glm-tiny", TINY_OVERRIDES + list(overrides))


def _load_inputs(workdir: Path) -> List[Dict[str, torch.Tensor]]:
    return torch.load(workdir / "inputs.pt")


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Non-trivial biases and LayerNorm affines, so that a misplaced bias cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator, dtype=param.dtype)
            if "layernorm" in name and name.endswith("weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.05 * noise)
            else:
                param.add_(0.2 * param.std() * noise)


def _forward_all(model, inputs) -> List[torch.Tensor]:
    with torch.no_grad():
        return [model(x["tokens"], x["position_ids"], x["attention_mask"]).detach().clone() for x in inputs]


def _gradients(model, inputs) -> Dict[str, torch.Tensor]:
    from megatron_glm.training.step import per_sequence_mean_loss

    model.zero_grad(set_to_none=True)
    total = 0.0
    for x in inputs[:2]:
        token_loss = model(x["tokens"], x["position_ids"], x["attention_mask"], labels=x["labels"])
        total = total + per_sequence_mean_loss(token_loss, x["loss_mask"])
    total.backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def init(workdir: Path) -> None:
    from megatron_glm.model.build import build_model

    run = _run_config()
    initialize_distributed(run, discover_world())
    model = build_model(run, parallel_output=False)
    _randomise(model, seed=7)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    torch.save(weights, workdir / "weights.pt")
    inputs = _load_inputs(workdir)
    torch.save(_forward_all(model, inputs), workdir / "init_logits.pt")

    grads = {}
    for label, alpha, on_output in (("alpha1", 1.0, True), ("alpha01_both", 0.1, True),
                                    ("alpha01_input_only", 0.1, False)):
        model.grad_shrink_alpha = alpha
        model.shrink_output_weight_gradient = on_output
        grads[label] = _gradients(model, inputs)
    torch.save(grads, workdir / "egs_grads.pt")

    model.grad_shrink_alpha, model.shrink_output_weight_gradient = 1.0, True
    sdpa = build_model(_run_config("model.attention_backend=sdpa"), parallel_output=False)
    sdpa.load_state_dict(model.state_dict())
    torch.save({"logits": _forward_all(sdpa, inputs), "grads": _gradients(sdpa, inputs)},
               workdir / "sdpa.pt")
    destroy_distributed()


def tp_equivalence(workdir: Path) -> None:
    from megatron.core import parallel_state

    from megatron_glm.model.build import build_model
    from megatron_glm.model.tp_shard import gather_full_tensors, load_full_state_dict

    weights = torch.load(workdir / "weights.pt")
    inputs = _load_inputs(workdir)
    world = discover_world()
    for tp in (1, 2, 4):
        run = _run_config(f"parallel.tensor={tp}")
        initialize_distributed(run, world)
        model = build_model(run, parallel_output=False)
        load_full_state_dict(model, weights)
        logits = _forward_all(model, inputs)
        grads = gather_full_tensors(model, _gradients(model, inputs))
        if torch.distributed.get_rank() == 0:
            torch.save({"logits": logits, "grads": grads}, workdir / f"tp{tp}.pt")
        parallel_state.destroy_model_parallel()
    destroy_distributed()


def train_step(model, optimizer, micro_batches) -> float:
    """One step exactly as the training loop takes it (micro-batch size 1), every update applied."""
    from megatron_glm.training.step import forward_backward, guarded_optimizer_step

    loss, _ = forward_backward(model, optimizer, micro_batches, 1, SEQ_LENGTH)
    applied, _, _ = guarded_optimizer_step(optimizer)
    assert applied
    return loss


def train_layout(workdir: Path, name: str, overrides: List[str]) -> None:
    from megatron.core import parallel_state

    from megatron_glm.data.synthetic_samples import synthetic_samples
    from megatron_glm.model.build import build_model_chunks
    from megatron_glm.model.tp_shard import load_full_state_dict
    from megatron_glm.training.step import build_optimizer, collate, evaluate, wrap_for_training

    run = _run_config(*overrides)
    validate(run, world_size=discover_world().world_size)
    initialize_distributed(run, discover_world())
    chunks = build_model_chunks(run)
    weights = torch.load(workdir / "weights.pt")
    for chunk in chunks:
        load_full_state_dict(chunk, weights)
    model = wrap_for_training(chunks, overlap_grad_reduce=run.parallel.overlap_grad_reduce)
    optimizer = build_optimizer(model, lr=1e-3)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    per_rank = GLOBAL_BATCH // dp

    def my_batches(seed):
        samples = synthetic_samples(GLOBAL_BATCH, SEQ_LENGTH, run.model.vocab_size, seed=seed)
        return [collate([sample]) for sample in samples[dp_rank * per_rank:(dp_rank + 1) * per_rank]]

    losses = [train_step(model, optimizer, my_batches(100 + step)) for step in range(TRAIN_STEPS)]
    first_batch_after = evaluate(model, my_batches(100), per_rank, 1, SEQ_LENGTH)
    if torch.distributed.get_rank() == 0:
        layers = [len(chunk.decoder.layers) for chunk in chunks]
        (workdir / f"train_{name}.json").write_text(json.dumps({"losses": losses, "first_batch_after": first_batch_after,
                                                "dp": dp, "rank0_layers": layers}))
    destroy_distributed()


def resume(workdir: Path, mode: str, name: str, overrides: List[str]) -> None:
    """mode "uninterrupted": 8 steps, checkpoint after step 4. mode "resumed": load it, steps 5-8."""
    from megatron.core import parallel_state

    from megatron_glm.data.synthetic_samples import synthetic_samples
    from megatron_glm.model.build import build_model_chunks
    from megatron_glm.model.tp_shard import load_full_state_dict
    from megatron_glm.training.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
    from megatron_glm.training.step import build_optimizer, collate, wrap_for_training

    run = _run_config(*overrides)
    initialize_distributed(run, discover_world())
    chunks = build_model_chunks(run)
    for chunk in chunks:
        load_full_state_dict(chunk, torch.load(workdir / "weights.pt"))
    model = wrap_for_training(chunks)
    optimizer = build_optimizer(model, lr=1e-3)
    dp, dp_rank = parallel_state.get_data_parallel_world_size(), parallel_state.get_data_parallel_rank()
    per_rank = GLOBAL_BATCH // dp

    def my_batches(step):
        samples = synthetic_samples(GLOBAL_BATCH, SEQ_LENGTH, run.model.vocab_size, seed=100 + step)
        return [collate([sample]) for sample in samples[dp_rank * per_rank:(dp_rank + 1) * per_rank]]

    checkpoints = str(workdir / "checkpoints")
    first = 0
    if mode == "resumed":
        common = load_checkpoint(latest_checkpoint(checkpoints), model, optimizer)
        first = common["step"]
    losses = {}
    for step in range(first, 8):
        losses[step + 1] = train_step(model, optimizer, my_batches(step))
        if mode == "uninterrupted" and step + 1 == 4:
            save_checkpoint(checkpoints, 4, model, optimizer, {"consumed_samples": 4 * GLOBAL_BATCH},
                            keep_last=2)
    if torch.distributed.get_rank() == 0:
        (workdir / f"resume_{name}.json").write_text(json.dumps(losses))
    destroy_distributed()


def data_consistency(workdir: Path) -> None:
    """Record which samples every rank consumes (TP/PP/DP layout from the run YAML in workdir)."""
    import hashlib

    from megatron.core import parallel_state

    from megatron_glm.training.batches import DatasetBatches

    run = load_run_config(str(workdir / "data_run.yaml"))
    validate(run, world_size=discover_world().world_size)
    initialize_distributed(run, discover_world())
    batches = DatasetBatches(run, train_samples=24, global_batch=8, micro_batch=2)
    seen = []
    for step in range(3):
        for micro in batches.batches_at(step * 8):
            for row in range(micro.tokens.shape[0]):
                digest = hashlib.sha256()
                for tensor in (micro.tokens[row], micro.position_ids[row], micro.attention_mask[row]):
                    digest.update(tensor.numpy().tobytes())
                seen.append(digest.hexdigest())
    record = {"dp": parallel_state.get_data_parallel_rank(), "pp": parallel_state.get_pipeline_model_parallel_rank(),
              "tp": parallel_state.get_tensor_model_parallel_rank(), "samples": seen}
    (workdir / f"data_consistency.rank{torch.distributed.get_rank()}.json").write_text(json.dumps(record))
    destroy_distributed()


def train_cli(workdir: Path, arguments: List[str]) -> None:
    """glm-train's own entry point on this rank; its exit code is written next to the run."""
    from megatron_glm.cli.train import main as glm_train

    code = glm_train(arguments)
    (workdir / f"exit.rank{os.environ['RANK']}").write_text(str(code))


def main() -> None:
    scenario, workdir = sys.argv[1], Path(sys.argv[2])
    if scenario == "init":
        init(workdir)
    elif scenario == "tp_equivalence":
        tp_equivalence(workdir)
    elif scenario == "train_cli":
        train_cli(workdir, sys.argv[3:])
    elif scenario == "resume":
        resume(workdir, sys.argv[3], sys.argv[4], sys.argv[5:])
    elif scenario == "data_consistency":
        data_consistency(workdir)
    elif scenario == "train_layout":
        train_layout(workdir, sys.argv[3], sys.argv[4:])
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main()
