"""Training: losses, negative miners, optimizers and schedules, augmentations, DDP."""
