"""synopt: ANN -> energy-efficient SNN, with one exact synaptic-operation accounting."""

__version__ = "0.1.0"
