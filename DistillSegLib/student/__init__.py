"""The student: a compact 3D U-Net on CT+PET, its configuration, preprocessing and model files."""
