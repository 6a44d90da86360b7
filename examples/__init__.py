"""Runnable examples built on kwik."""
