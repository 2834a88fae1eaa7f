"""Configuration: schema (frozen dataclasses), strict phased loader, demo fleet."""
