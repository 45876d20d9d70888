"""Plan a training run before paying for it: memory per device by part, fit, speed, the command line.

Reads the same flags as train.py (training.config.TrainConfig) plus the cluster's; see README "Planner".
"""
