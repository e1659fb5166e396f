"""nvfp4lab: the small shared package behind the stage scripts.

Modules (one job each):
  nvfp4    - NVFP4 numerics (reference PyTorch + dispatch to the compiled extension)
  dat      - the original `.dat` weight file format (read lazily, write atomically)
"""
