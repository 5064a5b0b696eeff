"""Where a run's numbers go: the run folder (`runfolder`) and Weights & Biases (`tracker`;
`wandb_report`: the W&B mode, and a report as its own W&B run beside the runs it reports);
`runlock`: the lock that keeps a run folder to one process; `provenance`: where a run came from.

Both are passive: they receive rows, images and summaries and compute none of them, so
every stage that produces numbers can hand them here.
"""
