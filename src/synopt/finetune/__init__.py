"""Training loops: ANN training, QAT for the conversion route, single-step direct training."""
