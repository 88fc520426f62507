"""mvlift's configs as package data: rigs/, data/, diffusion/, reconstruction/, recipes/, bench/, studies/ and the
demo configs ship in the wheel, so a ``-c`` path that is not there relative to the working directory is found here
(``datamodules.data_config.find_config``; e.g. ``mvlift fit -c recipes/gslrm_procedural_128.yaml`` from any folder).
The folder holds only YAML; this file makes setuptools ship it."""
