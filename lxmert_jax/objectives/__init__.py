"""What the model is trained to do: losses, the pre-training objective, masked decoding."""
