"""`python -m vicuna_cloud`: the same entry point as the `vicuna-cloud` script."""

from vicuna_cloud.cli import main

main()
