"""Apply Training-free Fast Attention (EDiT): KV compression with no adapter."""

from __future__ import annotations

from comfy_api.latest import io

from ..edit_core.ops.kv_compression import RATIOS, TEMPERATURES
from .training_free import DEFAULT_MIN_TOKENS, apply_training_free

CATEGORY = "EDiT"


class EDiTTrainingFree(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EDiTTrainingFree",
            display_name="Apply Training-free Fast Attention (EDiT)",
            category=CATEGORY,
            description="Returns a copy of the MODEL whose image attention looks at spatially pooled keys and values "
                        "(PixArt-Sigma's KV compression; for SD3/SD3.5 only the image keys are pooled, text stays "
                        "exact). No adapter or training: attention cost falls about ratio² times at high "
                        "resolution, with some loss of detail. Below min_tokens the MODEL is unchanged, so one graph "
                        "serves a 1024² base pass and a high-resolution pass.",
            inputs=[
                io.Model.Input("model", tooltip="A PixArt-Sigma/Alpha, SD3-Medium or SD3.5-Medium/Large diffusion "
                                                "model (an EDiT-patched one too: its converted layers are kept)."),
                io.Combo.Input("ratio", options=[str(r) for r in RATIOS], default="2",
                               tooltip="Pooling window: 2 averages 2×2 image tokens into one key/value (4× fewer "
                                       "keys), 3 → 9×, 4 → 16×. Higher is faster and blurrier."),
                io.Int.Input("min_tokens", default=DEFAULT_MIN_TOKENS, min=0, max=10_000_000,
                             tooltip="Compress only calls whose image has at least this many tokens (tokens = "
                                     "width·height/256 px for these models: 1024² = 4096). The default keeps "
                                     "1024² and smaller untouched."),
                io.Int.Input("start_block", default=0, min=0, max=1000,
                             tooltip="First block to compress (0-based)."),
                io.Int.Input("end_block", default=-1, min=-1, max=1000,
                             tooltip="Last block to compress, inclusive; -1 = the last block."),
                io.Float.Input("start_percent", default=0.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Compress from this point of sampling (0 = the first, noisiest step)."),
                io.Float.Input("end_percent", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Compress until this point of sampling (1 = the last step)."),
                io.Combo.Input("temperature", options=list(TEMPERATURES), default="teacher", optional=True,
                               tooltip="Softmax scale: teacher keeps the model's 1/√d; proportional multiplies it "
                                       "by √(log M / log N) for M pooled keys instead of N (see the help page for "
                                       "measured effect)."),
            ],
            outputs=[io.Model.Output(tooltip="The MODEL with compressed attention; the input MODEL is unchanged.")],
        )

    @classmethod
    def execute(cls, model, ratio: str, min_tokens: int, start_block: int, end_block: int, start_percent: float,
                end_percent: float, temperature: str = "teacher") -> io.NodeOutput:
        return io.NodeOutput(apply_training_free(model, ratio=int(ratio), min_tokens=min_tokens,
                                                 start_block=start_block, end_block=end_block,
                                                 start_percent=start_percent, end_percent=end_percent,
                                                 temperature=temperature))
