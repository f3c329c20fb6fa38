"""The built-in data set: MRI and CT brain slices with tumours, rendered from a real atlas."""
