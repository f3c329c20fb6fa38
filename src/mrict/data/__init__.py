"""Reading, preparing and splitting MRI/CT slices (the data contract of mrict)."""
