"""Where a run's numbers go: the run folder (`runfolder`) and Weights & Biases (`tracker`).

Both are passive: they receive rows, images and summaries and compute none of them, so
every stage that produces numbers can hand them here.
"""
