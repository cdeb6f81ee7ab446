"""Downstream evaluation while training: glm-eval's tasks on the live model (`train.eval_tasks`).

Every `train.downstream_eval_interval` steps, and at the end, the Trainer hands its model chunks
to `DownstreamEvaluator.evaluate`: the chunks go to eval mode, are wrapped in the inference module's
`InferenceModel` (full forwards for `mul`/`lm`, its KV cache for `gen`) and GLM-130B's evaluation
(`megatron_glm.evaluation.evaluate`, the code `glm-eval` runs) scores the tasks. No checkpoint is
written or read. Every rank takes part: TP and PP ranks of a model replica run the forwards
together, the data-parallel replicas split each file's examples as glm-eval does (rank r of W takes
examples r, r + W, ...) and the results are gathered over the data-parallel group. Afterwards the
chunks return to training mode (their vocab-parallel output restored) and every random number
generator is put back exactly: training continues as if nothing had run, so a resumed run stays
bit-identical to an uninterrupted one.

Numbers are flattened by `flatten_results` into metric keys:
- `eval/<task>/<metric>`: the task's size-weighted average over all its files (`Accuracy`, `EM`,
  `F1`, `PPL`);
- `eval/<task>/<group>/<metric>` per file group, when a task has more than one group;
- BPB: `eval/<task>[/<group>]/BPB`, or `.../BPB/<domain>` when the documents have several domains.

Layouts: any TP x PP x DP with one model chunk per pipeline rank. An interleaved pipeline
(`parallel.virtual_pipeline` > 1) holds several chunks per rank, which the inference module does not
drive: validation refuses eval_tasks there (evaluate its checkpoints with `glm-eval`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List, Sequence

from megatron_glm.config.schema import RunConfig

log = logging.getLogger("glm-train")


def eval_vocab(run: RunConfig):
    """The evaluation's Vocab: the run's tokenizer (data.tokenizer_model) with the special-token ids
    the training stream uses (data.special_token_ids over the tokenizer's own); synthetic data
    without a tokenizer: the synthetic stream's specials. Raises EvalError."""
    from megatron_glm.evaluation.vocab import Vocab, make_vocab

    data = run.data
    padded = run.model.resolved_padded_vocab_size
    if data.tokenizer_model:
        return make_vocab(data.tokenizer_model, {}, run_special_ids=data.special_token_ids,
                          padded_vocab_size=padded)
    from megatron_glm.data.synthetic_samples import synthetic_special_tokens
    from megatron_glm.evaluation.vocab import parse_special_ids

    synthetic = synthetic_special_tokens(run.model.vocab_size)
    special = {"pad": synthetic.pad, "mask": synthetic.mask, "gmask": synthetic.gmask, "smask": None, "eod": None,
               "sop": synthetic.sop, "eop": synthetic.eop, "eos": None}
    special.update(parse_special_ids(data.special_token_ids))
    return Vocab(special, None, source="synthetic stream")


def load_eval_tasks(run: RunConfig):
    """(task configs, vocab), every task file and data line read and checked; raises EvalError naming
    the file and line or key."""
    from megatron_glm.evaluation.data import load_examples, task_files
    from megatron_glm.evaluation.errors import EvalError
    from megatron_glm.evaluation.runner import load_tasks

    configs = load_tasks(run.train.eval_tasks)
    vocab = eval_vocab(run)
    padded = run.model.resolved_padded_vocab_size
    for cfg in configs:
        if cfg.kind == "lambada" and not vocab.has_tokenizer:
            raise EvalError(f"{cfg.source}: the LAMBADA task compares decoded words and needs a tokenizer "
                            f"(data.tokenizer_model)")
        for file in task_files(cfg, None):
            load_examples(cfg, file, vocab, padded)
    return configs, vocab


def eval_task_file_problems(run: RunConfig) -> List[str]:
    """The task files of train.eval_tasks read and checked with the run's tokenizer (YAML, keys, types,
    data folders, every data line): [] or one problem naming the file and line. The tools run it
    right after the config's validation (megatron_glm.config.validate checks paths and layout),
    before any process group exists."""
    from megatron_glm.config.validate import _eval_task_problems
    from megatron_glm.evaluation.errors import EvalError

    if not run.train.eval_tasks or _eval_task_problems(run):
        return []  # nothing to read, or already reported
    if run.data.tokenizer_model and not Path(run.data.tokenizer_model).is_file():
        return []  # reported by the data checks
    try:
        load_eval_tasks(run)
    except EvalError as error:
        return [f"train.eval_tasks: {error}"]
    return []


def flatten_results(results: Dict) -> Dict[str, float]:
    """glm-eval's results (`evaluate`, `--output`) -> {"eval/<task>/<metric>": value} (module doc)."""
    out: Dict[str, float] = {}
    for task, entry in results["tasks"].items():
        groups = entry["groups"]
        several = len(groups) > 1
        for group, metrics in groups.items():
            prefix = f"eval/{task}/{group}" if several else f"eval/{task}"
            for metric, stats in metrics.items():
                if isinstance(stats, dict) and "average" in stats:
                    out[f"{prefix}/{metric}"] = float(stats["average"])
                elif isinstance(stats, dict):  # BPB per domain
                    if len(stats) == 1:
                        out[f"{prefix}/{metric}"] = float(next(iter(stats.values())))
                    else:
                        out.update({f"{prefix}/{metric}/{domain}": float(v) for domain, v in stats.items()})
        if several:
            files = [f for f in entry["files"]]
            names = dict.fromkeys(m for f in files for m, v in f["metrics"].items() if isinstance(v, (int, float)))
            for metric in names:
                sized = [(f["size"], f["metrics"][metric]) for f in files if metric in f["metrics"]]
                total = sum(size for size, _ in sized)
                if total:
                    out[f"eval/{task}/{metric}"] = sum(size * value for size, value in sized) / total
    return out


class DownstreamEvaluator:
    """Runs `train.eval_tasks` on the Trainer's model chunks (collective: every rank calls `evaluate`)."""

    def __init__(self, run: RunConfig, chunks: Sequence):
        from megatron_glm.evaluation.samples import padded_length

        self.config = run
        self.interval = run.train.downstream_eval_interval
        self.chunks = list(chunks)
        self.configs, self.vocab = load_eval_tasks(run)
        self.longest = max(padded_length([c.max_seq_length]) + (c.max_gen_length if c.type == "gen" else 0)
                           for c in self.configs)
        self.alive: Callable[[], None] = lambda: None
        """Called before every forward pass (the Trainer tells its hang watchdog: a long evaluation
        is progress)."""

    def due(self, step: int, last: bool) -> bool:
        return last or bool(self.interval and step % self.interval == 0)

    def run_tasks(self) -> Dict:
        """glm-eval's results dict for the live model (collective)."""
        import torch
        from megatron.core import parallel_state
        from megatron.core.utils import unwrap_model

        from megatron_glm.evaluation.errors import EvalError
        from megatron_glm.evaluation.runner import evaluate
        from megatron_glm.evaluation.tasks import gather_over
        from megatron_glm.inference.model import InferenceModel

        if len(self.chunks) != 1:
            raise EvalError("downstream evaluation needs one model chunk per pipeline rank")
        glm = unwrap_model(self.chunks[0])
        model = self.config.model
        shape = SimpleNamespace(  # checkpoints.shapes.GLMShape's fields (the tools layer is not imported here)
            num_layers=model.num_layers, hidden_size=model.hidden_size, num_attention_heads=model.num_attention_heads,
            ffn_hidden_size=model.resolved_ffn_hidden_size, padded_vocab_size=model.resolved_padded_vocab_size,
            vocab_size=model.vocab_size, layernorm_epsilon=model.layernorm_epsilon, rotary_base=int(model.rotary_base))
        special = {k: v for k, v in self.vocab.special.items() if v is not None}
        dtype = next(glm.parameters()).dtype
        rng = _rng_states()
        was_training = [chunk.training for chunk in self.chunks]
        parallel_output = glm.parallel_output
        for chunk in self.chunks:
            chunk.eval()
        glm.parallel_output = False  # full-vocabulary logits on the last stage (gathered over TP)
        try:
            inference = InferenceModel(glm, shape, max_sequence_length=self.longest, special=special, dtype=dtype,
                                       tokenizer=self.vocab.tokenizer, source="live model")
            inference.extend = _beating(inference.extend, self.alive)  # KV-cache steps of gen tasks
            dp_world = parallel_state.get_data_parallel_world_size()
            group = parallel_state.get_data_parallel_group_gloo() if dp_world > 1 else None
            with torch.no_grad():
                return evaluate(self.configs, _beating(inference.logits, self.alive), self.vocab,
                                vocab_size=model.resolved_padded_vocab_size,
                                rank=parallel_state.get_data_parallel_rank(), world=dp_world,
                                gather=gather_over(group) if group is not None else None, progress=False,
                                model=inference)
        finally:
            glm.parallel_output = parallel_output
            for chunk, training in zip(self.chunks, was_training):
                chunk.train(training)
            _restore_rng(rng)

    def evaluate(self) -> tuple:
        """(flat metrics, seconds) of one evaluation (collective)."""
        started = time.perf_counter()
        metrics = flatten_results(self.run_tasks())
        return metrics, time.perf_counter() - started


def _beating(fn: Callable, alive: Callable[[], None]) -> Callable:
    def call(*args, **kwargs):
        alive()
        return fn(*args, **kwargs)

    return call


def _rng_states() -> dict:
    import random

    import numpy as np
    import torch
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    tracker = get_cuda_rng_tracker()
    try:
        states["tracker"] = tracker.get_states()
    except Exception:  # noqa: BLE001 - a tracker without states (CPU) has nothing to restore
        states["tracker"] = None
    return states


def _restore_rng(states: dict) -> None:
    import random

    import numpy as np
    import torch
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])
    if states["tracker"] is not None:
        get_cuda_rng_tracker().set_states(states["tracker"])
