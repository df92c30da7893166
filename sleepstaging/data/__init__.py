"""The data: the challenge layout (images, CSVs, timing), the image cache, loaders and batch augmentation."""
