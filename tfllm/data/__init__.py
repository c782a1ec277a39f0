"""Data: files or HF datasets -> validated examples -> token ids -> length-bucketed tf.data batches."""
