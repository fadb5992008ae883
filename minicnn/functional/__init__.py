"""Stateless array math that several layers share (im2col / col2im, softmax, ...)."""
