"""HD-VILA's generation heads on a StyleGAN2 prior: text-guided manipulation and text-guided super-resolution
(HD-VILA supplement D.3: image and text embeddings edit StyleGAN latents). Built on `data_tools` and the
`animation` package's StyleGAN2, inversion, synthetic faces and frozen judges; the text encoder is supplied by
the caller (the CLI wires HD-VILA's), so this package never imports `hdvila`."""
