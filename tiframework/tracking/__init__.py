"""Where a run's numbers go: the run folder (`runfolder`) and Weights & Biases (`tracker`;
`wandb_report`: the W&B mode, and a report as its own W&B run beside the runs it reports).

Both are passive: they receive rows, images and summaries and compute none of them, so
every stage that produces numbers can hand them here.
"""
