"""mrict: unpaired MRI <-> CT translation of brain images and its use for tumour segmentation."""

__version__ = "0.1.0"
