"""The experiment: does CycleGAN-translated cross-modality data help tumour segmentation?"""
