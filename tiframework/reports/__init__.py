"""Reports over many runs: `sweep_report` (+ `sweep_plots`, `trials`) for `tiframework sweep-report`."""
