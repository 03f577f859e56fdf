"""Training: the pix2pix iteration (step.py), the learning-rate policies (schedule.py), the loop (loop.py)."""
