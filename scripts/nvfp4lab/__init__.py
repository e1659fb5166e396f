"""nvfp4lab: the small shared package behind the stage scripts (doc/ARCHITECTURE.md has the
table of modules, one job each). The NVFP4 numerics are nvfp4_ref (the reference) and ops (the
compiled extension in cuda/); the `.dat` format is dat.
"""
