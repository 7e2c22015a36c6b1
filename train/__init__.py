"""Data plane: the program torchrun starts on every GPU node (`python -m train --run-uri URI`).

May import vicuna_cloud's torch-free modules; vicuna_cloud never imports this package.
"""
