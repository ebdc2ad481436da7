"""OpenFace converter: fills its architecture, matches Keras, tells people apart."""

from __future__ import annotations

import pytest

from facecloak.core.zoo.converters import openface

NAME = "openface"


@pytest.fixture(scope="module")
def sources(model_sources):
    return model_sources(NAME)


def test_convert_checks_the_keras_architecture(sources):
    # The hand-written network is checked against the Siamese package's Keras config.
    layers = openface.architecture_config(sources[1])
    openface.check_architecture(layers)
    conv3 = next(layer for layer in layers if layer["name"] == "conv3")
    conv3["config"]["filters"] = 128
    with pytest.raises(ValueError, match="does not match"):
        openface.check_architecture(layers)
