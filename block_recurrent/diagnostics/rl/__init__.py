"""Reinforcement-learning memory tasks written in JAX (T-Maze) for the recurrent layers."""
