"""A lab for self-supervised and metric representation learning of images."""
