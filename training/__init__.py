"""Offline half of trainserve: train an image classifier and export it as a TorchScript artifact."""
