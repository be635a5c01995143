"""Animation heads: image and video generators (StyleGAN2) for the platform."""
