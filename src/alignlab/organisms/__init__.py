"""Recipes that train model organisms whose misbehaviour is known exactly."""
