"""Evaluations on folders of real images: counting and family accuracy."""
