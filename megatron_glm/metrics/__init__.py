"""What a run records and how it is judged: the metrics/events schema (`schema`: the lines of
metrics.jsonl and events.jsonl, their writers and fast readers) and the loss-spike detector
(`spikes`: one rule, used online by the trainer's spike guard and offline by glm-monitor).

The trainer, the launcher and the monitor all import these; nothing here imports the monitor
(its server, views and report) or torch.
"""
