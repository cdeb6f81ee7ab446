"""CPU benchmark: `glm-prep tokenize` vs Megatron-LM's tools/preprocess_data.py vs sentencepiece alone.

What is measured, per language (English, Chinese):
- ours:        `glm-prep tokenize --input IN --output-prefix OUT --tokenizer-model M --workers W --quiet`
               (appends eod by default), run as a subprocess;
- megatron-lm: `python tools/preprocess_data.py --input IN --output-prefix OUT
               --tokenizer-type SentencePieceTokenizer --tokenizer-model M --workers W --append-eod
               --json-keys text` with PYTHONPATH=<--megatron-lm>, run as a subprocess;
- limit:       sentencepiece's own batch encoder, `sp.encode(texts, num_threads=W)`, in this process,
               with the texts already in memory (one call over all texts, and 4 MiB batches).
Wall clock of the whole subprocess, start-up included; best of --repeats runs (all runs reported).
Start-up alone is the wall clock of one run on a one-document input. Tokens are counted from the
outputs: our <prefix>.stats.json, Megatron-LM's .idx (sum of sequence lengths, read with
megatron.core.datasets.indexed_dataset.IndexedDataset); both include one eod per document, and the
limit's count adds one per document too, so all three count the same thing (the script checks that
the three counts agree).

Inputs (built once under --work-dir, reused after): en.jsonl (>= --en-mib MiB, the English "Pile"
documents of data_prep.demo_corpus, several seeds) and zh.jsonl (>= --zh-mib MiB, its Chinese "WuDao"
records as {"text": title + "\\n" + content}); both plain JSON lines with a "text" field. The tokenizer
is trained once: `glm-prep train-tokenizer --input en.jsonl zh.jsonl --model-prefix WORK/tok32k
--vocab-size 32000 --sample-mb 30` (sentencepiece may stop below 32000 pieces on synthetic text: the
size it reached is reported).

Megatron-LM checkout used for bench/RESULTS.md (tag core_v0.16.1, commit 55ac7082517c), from a bare
mirror of github.com/NVIDIA/Megatron-LM:

    mkdir -p /tmp/megatron-lm-core_v0.16.1
    git --git-dir=/path/to/Megatron-LM.git archive core_v0.16.1 | tar -x -C /tmp/megatron-lm-core_v0.16.1
    .venv/bin/pip install six regex pydantic triton     # imported by tools/preprocess_data.py, benchmark only

Run (from the repository root; on a 2-core machine ~35 s to build inputs and tokenizer once, then
~2 minutes of measurements; it first waits for other processes to go idle, see --quiet-wait):

    .venv/bin/python bench/tokenize_throughput.py --megatron-lm /tmp/megatron-lm-core_v0.16.1 \\
        --work-dir /tmp/glm_tok_bench --workers 2 --out /tmp/glm_tok_bench/tokenize_throughput.json

Without Megatron-LM: add --skip-megatron-lm (ours and the limit only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MIB = 1 << 20
LIMIT_BATCH_BYTES = 4 * MIB  # glm-prep's own batch size (data_prep/tokenize.py BATCH_BYTES)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ inputs
def build_inputs(work: Path, en_bytes: int, zh_bytes: int) -> dict:
    """en.jsonl / zh.jsonl from data_prep.demo_corpus, seeds 0, 1, ... until both are big enough."""
    en_path, zh_path = work / "en.jsonl", work / "zh.jsonl"
    if en_path.exists() and zh_path.exists():
        return {"en": str(en_path), "zh": str(zh_path), "built": False}
    sys.path.insert(0, str(ROOT))
    import zstandard

    from data_prep.demo_corpus import PILE_FILE, WUDAO_FILE, generate

    started = time.perf_counter()
    en_tmp, zh_tmp = en_path.with_suffix(".jsonl.part"), zh_path.with_suffix(".jsonl.part")
    en_size = zh_size = 0
    en_per_scale = 1.64e6  # bytes of English per unit of scale (measured: 1,640,077 at seed 0)
    seed = 0
    with open(en_tmp, "wb") as en_out, open(zh_tmp, "wb") as zh_out, tempfile.TemporaryDirectory() as tmp:
        while en_size < en_bytes or zh_size < zh_bytes:
            # at most scale 16 per seed; the last English chunk just big enough (5% margin)
            need = max(en_bytes - en_size, 0)
            scale = min(16.0, max(1.0, math.ceil(need / en_per_scale * 1.05)))
            stats = generate(Path(tmp), seed=seed, scale=scale)
            if en_size < en_bytes:
                with open(Path(tmp) / PILE_FILE, "rb") as packed:
                    raw = zstandard.ZstdDecompressor().stream_reader(packed).read()
                en_out.write(raw)
                en_size += len(raw)
                en_per_scale = stats[PILE_FILE]["uncompressed_bytes"] / scale
            if zh_size < zh_bytes:
                with open(Path(tmp) / WUDAO_FILE, "rb") as handle:
                    records = json.load(handle)
                lines = "".join(json.dumps({"text": r["title"] + "\n" + r["content"]}, ensure_ascii=False) + "\n"
                                for r in records).encode("utf-8")
                zh_out.write(lines)
                zh_size += len(lines)
            log(f"inputs: seed {seed} scale {scale:g}: en {en_size / MIB:.1f} MiB, zh {zh_size / MIB:.1f} MiB")
            seed += 1
    os.replace(en_tmp, en_path)
    os.replace(zh_tmp, zh_path)
    log(f"inputs built in {time.perf_counter() - started:.1f} s")
    return {"en": str(en_path), "zh": str(zh_path), "built": True, "seeds": seed,
            "seconds": round(time.perf_counter() - started, 1)}


def train_tokenizer(work: Path, glm_prep: str, inputs: dict, vocab_size: int, sample_mb: float,
                    workers: int) -> dict:
    prefix = work / "tok32k"
    model = Path(f"{prefix}.model")
    command = [glm_prep, "train-tokenizer", "--input", inputs["en"], inputs["zh"], "--model-prefix", str(prefix),
               "--vocab-size", str(vocab_size), "--sample-mb", str(sample_mb), "--workers", str(workers), "--quiet"]
    summary_path = work / "tok32k.summary.json"
    if model.exists() and summary_path.exists():
        return json.loads(summary_path.read_text())
    log("training the tokenizer: " + " ".join(command))
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"train-tokenizer failed ({done.returncode}):\n{done.stderr}")
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    summary.update(requested_vocab_size=vocab_size, sample_mb=sample_mb, command=" ".join(command),
                   seconds=round(time.perf_counter() - started, 1))
    summary_path.write_text(json.dumps(summary, indent=1))
    log(f"tokenizer: {summary['vocab_size']} pieces (asked {vocab_size}) in {summary['seconds']} s")
    return summary


# ------------------------------------------------------------------------------------ runs
def _clean(prefix: str) -> None:
    for suffix in (".bin", ".idx", ".stats.json", "_text_document.bin", "_text_document.idx"):
        if os.path.exists(prefix + suffix):
            os.remove(prefix + suffix)


def ours_command(glm_prep: str, path: str, prefix: str, model: str, workers: int):
    return [glm_prep, "tokenize", "--input", path, "--output-prefix", prefix, "--tokenizer-model", model,
            "--workers", str(workers), "--quiet"]


def megatron_command(python: str, megatron: str, path: str, prefix: str, model: str, workers: int):
    return [python, os.path.join(megatron, "tools", "preprocess_data.py"), "--input", path, "--output-prefix", prefix,
            "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", model, "--workers", str(workers),
            "--append-eod", "--json-keys", "text"]


def _busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot (all cores, /proc/stat)."""
    with open("/proc/stat") as handle:
        fields = [int(x) for x in handle.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu(who) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_wait: float, threshold: float) -> float:
    """Wait (up to max_wait s) until the machine is idle: under `threshold` of one core busy over 1 s.
    Other jobs on a 2-core box distort every timing here; returns the busy share seen last."""
    deadline = time.time() + max_wait
    while True:
        before = _busy_seconds()
        time.sleep(1.0)
        busy = _busy_seconds() - before
        if busy < threshold or time.time() > deadline:
            if busy >= threshold:
                log(f"machine still busy ({busy:.2f} cores) after {max_wait:.0f} s: timing anyway")
            return busy
        log(f"machine busy ({busy:.2f} cores used by other processes): waiting")
        time.sleep(4.0)


class Contention:
    """CPU seconds other processes used while a measurement ran (machine busy time minus ours)."""

    def __init__(self, who):
        self.who = who

    def __enter__(self):
        self.busy, self.own, self.started = _busy_seconds(), _own_cpu(self.who), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.started
        self.cpu = _own_cpu(self.who) - self.own
        self.foreign = max(0.0, _busy_seconds() - self.busy - self.cpu)
        return False


def timed(command, env, log_path: Path, quiet: dict) -> dict:
    wait_for_quiet(**quiet)
    with open(log_path, "w") as out, Contention(resource.RUSAGE_CHILDREN) as meter:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}; log: {log_path}\n"
                           + log_path.read_text()[-3000:])
    return {"seconds": meter.wall, "cpu_s": round(meter.cpu, 2), "foreign_cpu_s": round(meter.foreign, 2)}


def ours_counts(prefix: str) -> dict:
    stats = json.loads(Path(f"{prefix}.stats.json").read_text())
    return {"documents": stats["documents"], "sequences": stats["sequences"], "tokens": stats["tokens"],
            "in_process_seconds": stats["seconds"]}


def megatron_counts(prefix: str, megatron: str) -> dict:
    try:
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    except ImportError:
        sys.path.insert(0, megatron)
        from megatron.core.datasets.indexed_dataset import IndexedDataset
    dataset = IndexedDataset(f"{prefix}_text_document", mmap=True)
    counts = {"documents": int(len(dataset.document_indices) - 1), "sequences": int(len(dataset)),
              "tokens": int(dataset.sequence_lengths.sum(dtype="int64"))}
    del dataset
    return counts


def read_texts(path: str):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def sentencepiece_limit(model: str, texts, workers: int, repeats: int, quiet: dict) -> dict:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=model)
    result = {}
    # one call over all texts (the brief's definition), then glm-prep-sized batches (4 MiB of text)
    batches, batch, size = [], [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= LIMIT_BATCH_BYTES:
            batches.append(batch)
            batch, size = [], 0
    if batch:
        batches.append(batch)
    for name, groups in (("one_call", [texts]), ("batches_4mib", batches)):
        runs, cpu, foreign, tokens = [], [], [], 0
        for _ in range(repeats):
            wait_for_quiet(**quiet)
            with Contention(resource.RUSAGE_SELF) as meter:
                tokens = 0
                for group in groups:
                    ids = sp.encode(group, num_threads=workers)
                    tokens += sum(map(len, ids))
                    del ids
            runs.append(meter.wall)
            cpu.append(round(meter.cpu, 2))
            foreign.append(round(meter.foreign, 2))
        result[name] = {"runs_s": [round(s, 3) for s in runs], "seconds": round(min(runs), 3),
                        "cpu_s": cpu, "foreign_cpu_s": foreign,
                        "tokens": tokens + len(texts), "tokens_without_eod": tokens}
    return result


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/glm_tok_bench"))
    parser.add_argument("--megatron-lm", default="/tmp/megatron-lm-core_v0.16.1",
                        help="Megatron-LM checkout (tag core_v0.16.1) holding tools/preprocess_data.py")
    parser.add_argument("--skip-megatron-lm", action="store_true")
    parser.add_argument("--python", default=sys.executable, help="interpreter for Megatron-LM's script")
    parser.add_argument("--glm-prep", default=str(Path(sys.executable).parent / "glm-prep"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--en-mib", type=float, default=100.0)
    parser.add_argument("--zh-mib", type=float, default=50.0)
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--sample-mb", type=float, default=30.0)
    parser.add_argument("--languages", nargs="+", default=["en", "zh"], choices=["en", "zh"])
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="before each timed run wait up to this many s for other processes to go idle")
    parser.add_argument("--quiet-threshold", type=float, default=0.15,
                        help="idle means: other processes use under this many cores (over 1 s)")
    parser.add_argument("--out", type=Path, help="JSON results (default WORK/tokenize_throughput.json)")
    args = parser.parse_args(argv)

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    out = args.out or work / "tokenize_throughput.json"
    megatron = os.path.abspath(args.megatron_lm)
    use_megatron = not args.skip_megatron_lm
    if use_megatron and not os.path.isfile(os.path.join(megatron, "tools", "preprocess_data.py")):
        raise SystemExit(f"{megatron}/tools/preprocess_data.py not found (use --skip-megatron-lm to go without)")

    quiet = {"max_wait": args.quiet_wait, "threshold": args.quiet_threshold}
    inputs = build_inputs(work, int(args.en_mib * MIB), int(args.zh_mib * MIB))
    tokenizer = train_tokenizer(work, args.glm_prep, inputs, args.vocab_size, args.sample_mb, args.workers)
    model = tokenizer["model"]

    ours_env = dict(os.environ)
    meg_env = dict(os.environ, PYTHONPATH=megatron + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   PYTHONWARNINGS="ignore")
    results = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                           "python": platform.python_version(), "platform": platform.platform()},
               "workers": args.workers, "repeats": args.repeats, "tokenizer": tokenizer,
               "megatron_lm": megatron if use_megatron else None, "languages": {}}
    try:
        import sentencepiece

        results["machine"]["sentencepiece"] = sentencepiece.__version__
    except ImportError:
        pass

    for lang in args.languages:
        path = inputs[lang]
        size = os.path.getsize(path)
        out_dir = work / f"out_{lang}"
        out_dir.mkdir(exist_ok=True)
        tiny = work / f"{lang}.1doc.jsonl"
        with open(path, encoding="utf-8") as handle:
            tiny.write_text(handle.readline(), encoding="utf-8")
        entry = {"input": path, "bytes": size, "mb": round(size / 1e6, 1), "mib": round(size / MIB, 1),
                 "tools": {}}
        tools = [("ours", lambda p, o: ours_command(args.glm_prep, p, o, model, args.workers), ours_env,
                  ours_counts)]
        if use_megatron:
            tools.append(("megatron-lm", lambda p, o: megatron_command(args.python, megatron, p, o, model,
                                                                      args.workers), meg_env,
                          lambda o: megatron_counts(o, megatron)))
        runs = {name: [] for name, *_ in tools}
        for name, build, env, _ in tools:  # start-up: one document
            prefix = str(out_dir / f"{name}_1doc")
            _clean(prefix)
            command = build(str(tiny), prefix)
            startup = timed(command, env, work / "logs" / f"{lang}_{name}_1doc.log", quiet)
            entry["tools"][name] = {"command": " ".join(command), "startup_s": round(startup["seconds"], 3),
                                    "startup_foreign_cpu_s": startup["foreign_cpu_s"]}
            log(f"{lang} {name}: start-up (1 document) {entry['tools'][name]['startup_s']:.2f} s")
        for repeat in range(args.repeats):
            for name, build, env, _ in tools:
                prefix = str(out_dir / name)
                _clean(prefix)
                run = timed(build(path, prefix), env, work / "logs" / f"{lang}_{name}_{repeat}.log", quiet)
                runs[name].append(run)
                log(f"{lang} {name}: run {repeat + 1}: {run['seconds']:.2f} s, {run['cpu_s']:.1f} CPU s "
                    f"(other processes: {run['foreign_cpu_s']:.1f} CPU s)")
        for name, _, _, count in tools:
            tool = entry["tools"][name]
            tool.update(count(str(out_dir / name)))
            tool["runs_s"] = [round(r["seconds"], 3) for r in runs[name]]
            tool["cpu_s"] = [r["cpu_s"] for r in runs[name]]
            tool["foreign_cpu_s"] = [r["foreign_cpu_s"] for r in runs[name]]
            tool["seconds"] = round(min(r["seconds"] for r in runs[name]), 3)
            tool["tokens_per_s"] = round(tool["tokens"] / tool["seconds"], 1)
            tool["mb_per_s"] = round(size / 1e6 / tool["seconds"], 2)

        log(f"{lang}: sentencepiece limit (texts in memory)")
        texts = read_texts(path)
        limit = sentencepiece_limit(model, texts, args.workers, args.repeats, quiet)
        for name, value in limit.items():
            value.update(documents=len(texts), tokens_per_s=round(value["tokens"] / value["seconds"], 1),
                         mb_per_s=round(size / 1e6 / value["seconds"], 2))
            entry["tools"][f"limit-{name}"] = value
        del texts
        counts = {name: entry["tools"][name]["tokens"] for name in entry["tools"]}
        entry["token_counts_agree"] = len(set(counts.values())) == 1
        if not entry["token_counts_agree"]:
            log(f"{lang}: token counts differ: {counts}")
        ours = entry["tools"]["ours"]
        if use_megatron:
            entry["ours_vs_megatron_lm"] = round(entry["tools"]["megatron-lm"]["seconds"] / ours["seconds"], 2)
        entry["ours_vs_limit"] = round(entry["tools"]["limit-one_call"]["seconds"] / ours["seconds"], 2)
        entry["ours_vs_limit_batches"] = round(entry["tools"]["limit-batches_4mib"]["seconds"] / ours["seconds"], 2)
        results["languages"][lang] = entry
        out.write_text(json.dumps(results, indent=1))

    print_table(results)
    out.write_text(json.dumps(results, indent=1))
    log(f"wrote {out}")
    return 0


def print_table(results: dict) -> None:
    """Markdown table; "vs ours" = this row's best time / our best time (> 1: we are faster)."""
    print("| input | tool | MB | documents | tokens | runs s | best s | start-up s | CPU s | tokens/s | MB/s "
          "| vs ours | other procs CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for lang, entry in results["languages"].items():
        ours_s = entry["tools"]["ours"]["seconds"]
        for name, tool in entry["tools"].items():
            startup = tool.get("startup_s")
            best = tool["runs_s"].index(min(tool["runs_s"]))
            cpu = tool["cpu_s"][best]
            print(f"| {lang} | {name} | {entry['mb']} | {tool['documents']:,} | {tool['tokens']:,} | "
                  f"{' / '.join(f'{s:.2f}' for s in tool['runs_s'])} | {tool['seconds']:.2f} | "
                  f"{'' if startup is None else f'{startup:.2f}'} | {cpu:.1f} | {tool['tokens_per_s'] / 1e6:.2f} M | "
                  f"{tool['mb_per_s']:.1f} | {tool['seconds'] / ours_s:.2f} | "
                  f"{' / '.join(f'{s:.1f}' for s in tool['foreign_cpu_s'])} |")
    for lang, entry in results["languages"].items():
        print(f"{lang}: ours/megatron-lm {entry.get('ours_vs_megatron_lm')}x, ours/limit {entry['ours_vs_limit']}x "
              f"(4 MiB batches: {entry['ours_vs_limit_batches']}x), token counts agree: {entry['token_counts_agree']}")


if __name__ == "__main__":
    sys.exit(main())
