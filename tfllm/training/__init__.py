"""Training: optimizer and schedule, distribution strategy, and the Trainer every task shares."""
