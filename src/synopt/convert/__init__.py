"""The conversion route (Sorbaro et al. 2020): QReLU fine-tuning, weight scaling, conversion to sinabs."""
