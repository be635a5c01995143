"""Training recipes: a config plus a small objective class, run by the one shared trainer."""
