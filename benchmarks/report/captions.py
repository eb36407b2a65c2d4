"""What each plot shows, in the words under it in the report and in its alt text."""

CAPTIONS = {
    "learning_curves": "Loss and accuracy per epoch, read back from both pipelines' TensorBoard event files: median "
    "over repeats, shaded from the lowest to the highest repeat.",
    "training_throughput": "Steady-state training samples/s: pipelines (median, bar from the slowest to the fastest "
    "repeat) and bare loops (one run each).",
    "inference_latency": "In-process latency per call, batch 1 and batch 64: bar at the median, line from the fastest "
    "call to the p99.",
    "latency_distribution": "Served latency per request with one client, batch 1: box from the 25th to the 75th "
    "percentile, whiskers from the 1st to the 99th; each box names its server.",
    "throughput_vs_concurrency": "Requests per second and p99 latency against concurrent clients for every endpoint; "
    "bars span the reported windows; hollow markers are generator-bound.",
}
