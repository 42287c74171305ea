"""The config boundary: schema (typed dataclasses), validation, the resolved form, and the run's context."""

from pipeline.config.resolvers import register_resolvers
from pipeline.config.schema import ROLES, TrainConfig, register_configs
from pipeline.config.validate import to_runconfig

__all__ = ["ROLES", "TrainConfig", "register_configs", "register_resolvers", "to_runconfig"]
