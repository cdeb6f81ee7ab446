"""What each rank runs in the glm-ckpt multi-rank tests (launched like tests/multirank/harness.py).

    ckpt_scenarios.py save_dist WORKDIR TP PP      TP*PP ranks: glm-tiny with WORKDIR/weights.pt,
                                                   Adam state materialised, saved by the trainer's
                                                   save_checkpoint into WORKDIR/train_ckpt (step 12)
    ckpt_scenarios.py load_dist WORKDIR CKPT TP PP TP*PP ranks: the trainer's load_checkpoint (no
                                                   optimizer) of CKPT, logits of WORKDIR/inputs.pt
                                                   into WORKDIR/loaded_logits.pt
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from megatron_glm.config.loader import load_run_config
from megatron_glm.runtime.distributed import destroy_distributed, discover_world, initialize_distributed


def _run(tp: int, pp: int):
    return load_run_config("glm-tiny", ["model.seq_length=64", f"parallel.tensor={tp}", f"parallel.pipeline={pp}"])


def save_dist(workdir: Path, tp: int, pp: int) -> None:
    from megatron_glm.model.build import build_model_chunks
    from megatron_glm.model.tp_shard import load_full_state_dict
    from megatron_glm.training.checkpointing import _materialise_optimizer_state, save_checkpoint
    from megatron_glm.training.step import build_optimizer, wrap_for_training

    run = _run(tp, pp)
    initialize_distributed(run, discover_world())
    chunks = build_model_chunks(run)
    weights = torch.load(workdir / "weights.pt")
    for chunk in chunks:
        load_full_state_dict(chunk, weights)
    model = wrap_for_training(chunks)
    optimizer = build_optimizer(model, lr=1e-3)
    _materialise_optimizer_state(optimizer)
    save_checkpoint(str(workdir / "train_ckpt"), 12, model, optimizer,
                    {"loop": {"step": 12, "consumed_samples": 96}})
    destroy_distributed()


def load_dist(workdir: Path, path: str, tp: int, pp: int) -> None:
    """Load with the trainer's own loader at TP x PP; run the pipeline by hand (one micro-batch,
    activations passed stage to stage with send/recv) and save the last stage's logits."""
    import torch.distributed as dist
    from megatron.core import parallel_state

    from megatron_glm.model.build import build_model
    from megatron_glm.training.checkpointing import latest_checkpoint, load_checkpoint

    run = _run(tp, pp)
    initialize_distributed(run, discover_world())
    first, last = parallel_state.is_pipeline_first_stage(), parallel_state.is_pipeline_last_stage()
    model = build_model(run, pre_process=first, post_process=last, parallel_output=False)
    load_checkpoint(latest_checkpoint(path), [model], None)
    model.eval()
    inputs = torch.load(workdir / "inputs.pt")
    prev = parallel_state.get_pipeline_model_parallel_prev_rank()
    nxt = parallel_state.get_pipeline_model_parallel_next_rank()
    logits = []
    with torch.no_grad():
        for x in inputs:
            seq, batch = x["tokens"].shape[1], x["tokens"].shape[0]
            if not first:
                received = torch.empty(seq, batch, run.model.hidden_size)
                dist.recv(received, src=prev)
                model.set_input_tensor(received)
            out = model(x["tokens"] if first else None, x["position_ids"], x["attention_mask"])
            if last:
                logits.append(out.clone())
            else:
                dist.send(out.contiguous(), dst=nxt)
    if last and parallel_state.get_tensor_model_parallel_rank() == 0:
        torch.save(logits, workdir / "loaded_logits.pt")
    destroy_distributed()


def main() -> None:
    scenario, workdir = sys.argv[1], Path(sys.argv[2])
    if scenario == "save_dist":
        save_dist(workdir, int(sys.argv[3]), int(sys.argv[4]))
    elif scenario == "load_dist":
        load_dist(workdir, sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main()
