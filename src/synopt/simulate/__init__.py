"""Input encodings and T-step simulation of converted networks in sinabs."""
