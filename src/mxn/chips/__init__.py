"""What accelerators a machine has, from each vendor's own tool, and how a Ray node advertises them."""
