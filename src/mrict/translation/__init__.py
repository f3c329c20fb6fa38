"""Unpaired MRI <-> CT translation: CycleGAN networks, losses, training, inference, metrics."""
