"""Task recipes, one per task, each written once and called by every entry point (the Python API, the per-image
job, slides, grid search, training validation, the server):

- :mod:`.nuclei`: automatic nucleus instance segmentation (AIS): resample → tile → instance maps → chunk engine →
  labels in the input frame.
"""
