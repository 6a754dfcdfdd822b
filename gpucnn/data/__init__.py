"""Data: datasets, image folders and files, augmentation, the train / validation / test splits, batches."""
