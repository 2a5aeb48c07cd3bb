"""The segmentation core: the ONNX contract, image decoding, letterbox geometry, the onnxruntime engine, output
rendering and the request pipeline. It imports neither FastAPI nor torch, and reads no environment variables:
`service` (the HTTP layer) and `model_export` (training and export tools) both build on it."""
