"""Learning from use: the disagreement log, triple mining, training, the gate and the model registry."""
