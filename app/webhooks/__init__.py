"""Webhooks: a job's events POSTed to the URL its request named, signed, at least once.

``targets`` decides which URLs may be called (no private addresses), ``payloads`` what is sent,
``sender`` makes one signed attempt, ``dispatcher`` drives deliveries from Redis with retries.
"""
