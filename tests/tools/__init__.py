"""Tests of the tool registry and sandbox."""
