"""MobileNetV1/V3 model zoo for MindSpore."""
