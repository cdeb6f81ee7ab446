"""glm-ckpt conversion throughput vs a plain copy of the same bytes, side by side in one run.

A random fp32 model of >= 1 GB (default: 8 layers, hidden 1536, 12 heads, ffn 4096, vocab 32768,
1.11 GB) is written as a safetensors export; then a plain copy of that directory (shutil.copytree:
read + write of the same bytes) and the conversions safetensors -> SAT TP2, SAT TP2 -> dist
TP2 x PP2, dist -> safetensors, timed in this process (torch and the converter already imported;
--cli times fresh `glm-ckpt convert` processes instead, interpreter start and imports included, which
on a loaded machine adds seconds), and the plain copy once more at the end. Every contender starts from the same
state: the source in the page cache, the memory of a just-deleted copy of it free again, no dirty
pages (an untimed copy + delete + os.sync before each), and its time includes the os.sync that
puts its output on disk, so none profits from write-back left to the next one. The free memory
matters on virtual machines whose guest pages are backed lazily: writing into pages the guest has
not touched yet was measured several times slower than into just-freed ones (the same plain copy
took 0.7 s right after the warm-up copy was deleted and 3.1 s at the end of the run without it). The ratio is copy time /
conversion time (goal: >= 0.6), against the first copy and against the median of the three copies. `cp -r` of the same directory is timed too (the same kernel copy).
Memory: the peak anonymous RSS (RssAnon of /proc/self/status, sampled every 20 ms by a thread:
what an OOM kill counts; memory-mapped file pages and the page cache are not in it) of each
conversion, above what the process held before it, in a first, untimed run of the same conversion
(with the sampling thread running, sat -> dist took 2.0-2.7 s against 1.1-1.2 s without it, in
one sitting on the 2-core machine). Results: stdout and --json FILE.

    python bench/ckpt_convert_throughput.py [--workdir DIR] [--layers 24] [--json bench/results/x.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

import checkpoints.convert  # noqa: F401  (the CLI imports these on first use: not part of a conversion's time)
import checkpoints.forward  # noqa: F401
import checkpoints.inspect_ckpt  # noqa: F401
from checkpoints.cli import main as cli_main
from checkpoints.formats.base import WriteOptions
from checkpoints.formats.safetensors_format import SafetensorsWriter
from checkpoints.shapes import GLMShape


def _write_source(root: Path, glm: GLMShape) -> None:
    root.mkdir(parents=True)
    entries = glm.entries()
    writer = SafetensorsWriter(root, glm, WriteOptions(), step=1, dtypes={k: torch.float32 for k, _, _ in entries})
    generator = torch.Generator().manual_seed(0)
    for key, spec, layer in entries:
        writer.write(key, spec, layer, torch.randn(spec.shape(glm), generator=generator))
    writer.close()


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _rss_anon() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:"))


class _PeakAnon:
    """The peak RssAnon while the block runs, sampled by a thread (bytes above the start)."""

    def __enter__(self):
        self.start = self.peak = _rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, _rss_anon())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon())
        self.above_start = self.peak - self.start


def _timed(action, source: Path) -> float:
    """Seconds for `action()` plus the sync of what it wrote (after the untimed preparation: a copy
    of `source` deleted again, which leaves the source in the page cache and its memory free, and
    a sync)."""
    scratch = source.parent / "scratch"
    shutil.copytree(source, scratch)
    shutil.rmtree(scratch)
    os.sync()
    start = time.perf_counter()
    action()
    os.sync()
    return time.perf_counter() - start


def _convert_in_process(arguments) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        if cli_main(arguments) != 0:
            raise SystemExit(f"conversion failed: {arguments}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", help="where to write (default: a temporary directory, removed after)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--cli", action="store_true", help="time `glm-ckpt convert` processes")
    args = parser.parse_args()
    glm = GLMShape(num_layers=args.layers, hidden_size=1536, num_attention_heads=12, ffn_hidden_size=4096,
                   padded_vocab_size=32768)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ckpt_bench_"))
    try:
        source = work / "source"
        _write_source(source, glm)
        nbytes = _size(source)
        copy_s = _timed(lambda: shutil.copytree(source, work / "copy"), source)
        cp_s = _timed(lambda: subprocess.run(["cp", "-r", str(source), str(work / "cp")], check=True), source)
        steps = [("safetensors -> sat TP2", source, work / "sat", ["--to", "sat", "--tp", "2"]),
                 ("sat TP2 -> dist TP2xPP2", work / "sat", work / "dist",
                  ["--to", "dist", "--tp", "2", "--pp", "2", "--num-attention-heads", "12"]),
                 ("dist -> safetensors", work / "dist", work / "st", ["--to", "safetensors"])]
        results = {"mode": "cli processes" if args.cli else "in process", "model_bytes": nbytes,
                   "params": glm.parameter_count(), "copy_s": copy_s, "copy_GBps": nbytes / copy_s / 1e9, "cp_s": cp_s,
                   "load_average": os.getloadavg(),
                   "conversions": []}
        print(f"model {nbytes / 1e9:.2f} GB ({glm.parameter_count():,} fp32 parameters)")
        largest = max(torch.Size(spec.shape(glm)).numel() * 4 for _, spec, _ in glm.entries())
        results["largest_tensor_bytes"] = largest
        print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; largest tensor {largest / 2**20:.0f} MiB")
        print(f"plain copy                 {copy_s:6.2f} s  {nbytes / copy_s / 1e9:5.2f} GB/s")
        print(f"cp -r                      {cp_s:6.2f} s  {nbytes / cp_s / 1e9:5.2f} GB/s")
        for name, src, dst, extra in steps:
            arguments = ["convert", "--quiet", str(src), str(dst)] + extra
            if args.cli:
                command = [sys.executable, "-m", "checkpoints.cli"] + arguments
                seconds = _timed(lambda: subprocess.run(command, check=True, stdout=subprocess.DEVNULL), source)
                peak = None
            else:
                first = ["convert", "--quiet", str(src), str(dst) + ".memory"] + extra
                with _PeakAnon() as anon:  # untimed: the sampling thread slows some conversions 2x
                    _convert_in_process(first)
                shutil.rmtree(str(dst) + ".memory")
                peak = anon.above_start
                seconds = _timed(lambda: _convert_in_process(arguments), source)
            ratio = copy_s / seconds
            results["conversions"].append({"name": name, "seconds": seconds, "GBps": nbytes / seconds / 1e9,
                                           "vs_copy": ratio, "vs_cp": cp_s / seconds, "peak_anon_bytes": peak})
            memory = f"  peak RssAnon +{peak / 2**20:.0f} MiB" if peak is not None else ""
            print(f"{name:26s} {seconds:6.2f} s  {nbytes / seconds / 1e9:5.2f} GB/s  {ratio:.2f}x copy speed  "
                  f"{cp_s / seconds:.2f}x cp{memory}")
        copy_again = _timed(lambda: shutil.copytree(source, work / "copy2"), source)
        results["copy_again_s"] = copy_again
        print(f"plain copy again           {copy_again:6.2f} s  {nbytes / copy_again / 1e9:5.2f} GB/s")
        # single copies scatter 0.5-1.6 s on the shared machine: the ratios that count use their median
        base = statistics.median([copy_s, cp_s, copy_again])
        results["median_copy_s"] = base
        print(f"speed vs the median of the three copies ({base:.2f} s):", ", ".join(
            f"{c['name']} {base / c['seconds']:.2f}x" for c in results["conversions"]))
        for conversion in results["conversions"]:
            conversion["vs_median_copy"] = base / conversion["seconds"]
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
