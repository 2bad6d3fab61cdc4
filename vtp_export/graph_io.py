"""Names of the exported graphs' inputs and outputs, defined once for exporter, verifier and runtime."""

PIXEL_VALUES = "pixel_values"
IMAGE_EMBEDS = "image_embeds"
TOKEN_INDEX = "token_index"

VISION_INPUTS = (PIXEL_VALUES,)
VISION_OUTPUTS = (IMAGE_EMBEDS, TOKEN_INDEX)

VISION_ONNX = "vision.onnx"
CONFIG_JSON = "config.json"
PRODUCER = "vtp-export"

# token_index value of an output slot that has no source token (zero padding).
NO_SOURCE = -1
