"""vicuna-cloud: the Vicuna fine-tuning recipe on preemptible cloud GPUs.

The control plane (this package) never imports torch; see DESIGN.md.
"""

__version__ = "0.1.0"
