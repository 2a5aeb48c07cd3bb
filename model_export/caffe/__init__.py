"""Import the DeepLab-v2 Caffe weights without Caffe: a runtime-built caffe.proto subset and a converter."""

from .convert import CaffeError, convert_caffemodel, read_caffemodel

__all__ = ["CaffeError", "convert_caffemodel", "read_caffemodel"]
