"""Training loops, tasks, LR policies and evaluation."""
