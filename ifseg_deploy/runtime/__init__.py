"""Inference: the image-in/probabilities-out graph, the paper's refinement, and the Segmenter API."""
