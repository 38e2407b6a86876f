"""Tests use the product's own webhook receiver (streamvad/receiver.py)."""

from streamvad.receiver import Received, WebhookReceiver

__all__ = ["Received", "WebhookReceiver"]
