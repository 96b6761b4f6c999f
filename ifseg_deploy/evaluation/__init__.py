"""Measuring accuracy: the paper's mIoU protocol (bincount confusion matrix), dataset readers (ADE20K,
COCO-Stuff 171 / 15 unseen, a plain folder layout) and the loop behind ``ifseg-deploy eval``."""
