"""HD-VILA platform: video-language pretraining with generation heads."""
from pathlib import Path

from setuptools import find_namespace_packages, setup

HERE = Path(__file__).parent
# requirements.txt is what `make` installs (tests included); a line ending in "# extra: NAME" is optional for users
REQUIREMENTS: list[str] = []
EXTRAS: dict[str, list[str]] = {}
for line in (HERE / "requirements.txt").read_text().splitlines():
    requirement, _, comment = line.partition("#")
    if not requirement.strip():
        continue
    extra = comment.strip().removeprefix("extra:").strip() if comment.strip().startswith("extra:") else None
    (EXTRAS.setdefault(extra, []) if extra else REQUIREMENTS).append(requirement.strip())

setup(
    name="hdvila",
    version="0.1.0",
    description="Video-language pretraining (HD-VILA) with retrieval, diffusion and animation heads",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # namespace packages too, so data folders without __init__.py (assets/corpus, configs/pretrain, ...) are
    # packages of their own and their files install as package data
    packages=find_namespace_packages(include=["data_tools*", "hdvila*", "diffusion*", "animation*", "instruct*",
                                              "spo*", "bridge*", "heads*", "cca*"],
                                     exclude=["*.__pycache__"]),
    package_data={
        "data_tools": ["assets/**/*", "training/deepspeed/*.json"],
        "hdvila": ["models/model_configs/*.yaml", "configs/**/*.yaml", "serve/static/*"],
    },
    include_package_data=True,
    install_requires=REQUIREMENTS,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["hdvila=hdvila.cli:main"]},
)
