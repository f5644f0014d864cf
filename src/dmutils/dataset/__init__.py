"""Synthetic dataset factory: prompts -> images + attention maps -> masks -> VOC-layout folders."""
