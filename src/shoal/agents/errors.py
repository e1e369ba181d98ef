"""Errors raised by agents and flows; they live in :mod:`shoal.errors` (one tree) and
are re-exported here for ``from shoal.agents.errors import ...``."""

from __future__ import annotations

from shoal.errors import GuardrailTripped, StepFailed, ToolFailed

__all__ = ["GuardrailTripped", "StepFailed", "ToolFailed"]
