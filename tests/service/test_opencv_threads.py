"""`SEGMENT_OPENCV_THREADS`: the app sets OpenCV's own thread count, process-wide, from its settings."""

from __future__ import annotations

import cv2

from service.app import create_app
from service.settings import Settings


def test_the_app_sets_opencv_threads_from_its_settings() -> None:
    before = cv2.getNumThreads()
    try:
        create_app(Settings(opencv_threads=2))
        assert cv2.getNumThreads() == 2
        create_app(Settings())
        assert cv2.getNumThreads() == 1  # the default: OpenCV's splits cost more CPU than they save here
    finally:
        cv2.setNumThreads(before)
