"""InstructDiffusion in miniature: every vision task (segmentation, keypoints, restoration, editing) as
"edit the source image as the sentence says", with the data, decoders and scores in `instruct.tasks` and
`instruct.decode`."""
