"""Command-line clients of the segmentation service: `segment` (batch) and `segment-webcam` (live video)."""
