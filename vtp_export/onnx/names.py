"""Names of the exported graphs' inputs and outputs, defined once for exporter, verifier and runtime."""

PIXEL_VALUES = "pixel_values"
TEXT_EMBEDS = "text_embeds"
IMAGE_EMBEDS = "image_embeds"
DEEPSTACK_EMBEDS = "deepstack_embeds"  # (B, levels, K, D_llm): the kept tokens of each DeepStack level (Qwen3-VL)
TOKEN_INDEX = "token_index"
NUM_VALID = "num_valid"
INPUT_IDS = "input_ids"

VISION_INPUTS = (PIXEL_VALUES,)
TEXT_CONDITIONED_VISION_INPUTS = (PIXEL_VALUES, TEXT_EMBEDS)
VISION_OUTPUTS = (IMAGE_EMBEDS, TOKEN_INDEX)
TEXT_INPUTS = (INPUT_IDS,)
TEXT_OUTPUTS = (TEXT_EMBEDS,)

VISION_ONNX = "vision.onnx"
TEXT_ONNX = "text.onnx"
CONFIG_JSON = "config.json"
PRODUCER = "vtp-export"

MAX_DYNAMIC_BATCH = 64  # largest batch of a dynamic-batch graph (and of its TensorRT profile)
ENGINE_FOLDER = "engine"  # where vtp-export build puts the engines, inside the export folder
