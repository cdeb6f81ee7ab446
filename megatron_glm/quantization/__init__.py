"""Weight-only INT8/INT4 inference as GLM-130B (docs/glm130b.md §5, docs/quantization.md): quantized
stand-ins for megatron-core's Column/RowParallelLinear, the quantized matmul and its kernel hook,
and loading quantized (or quantize-on-load) weights shard by shard."""

QUANTIZATIONS = ("int8", "int4")
