"""The report: one self-contained HTML page from the store (funnels, distributions, costs, a task browser),
and a local server that browses every task. `tasksynth report` is its command."""
