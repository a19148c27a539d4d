"""Training loops, tasks, LR policies and ticket export (evaluation lives in ``evaluation``)."""
