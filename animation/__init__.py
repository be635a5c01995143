"""Animation heads: image and video generators (StyleGAN2) for the platform.

Importing the package registers its readers of older exported folders (`animation.legacy`) and its synthetic
faces as the image data set "faces" (`animation.faces`)."""
from . import faces, legacy  # noqa: F401  (registrations)
