"""Demos of whizorch on a local etcd cluster (``python -m whizorch.demo``)."""
