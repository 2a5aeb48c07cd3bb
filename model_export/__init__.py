"""Build, train, evaluate and export ResNet-ASPP (DeepLab) models to the ONNX contract."""
