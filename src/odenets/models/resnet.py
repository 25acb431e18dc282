"""Pre-activation CIFAR ResNets and the In-ResNet family (being written)."""
