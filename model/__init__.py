"""DiffBIR in pure PyTorch: stage-1 nets, SD 2.1 + LAControlNet, samplers and latent image guidance.

Nothing here imports the web or queue code; see docs/model.md for the module map.
"""
