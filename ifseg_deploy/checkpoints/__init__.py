"""Loading OFA checkpoints (official fairseq files and Hugging Face directories) safely."""
