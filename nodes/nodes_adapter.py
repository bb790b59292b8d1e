"""Load EDiT Adapter and Apply EDiT Attention."""

from __future__ import annotations

from comfy_api.latest import io

from ..edit_core.adapter import load_adapter
from .apply import ATTACHMENT_KEY, ATTN2_CHOICES, BACKENDS, ETA_CHOICES, apply_edit
from .events import APPLY_EVENT, send_event
from .io_types import EDiTAdapterType
from .model_folder import adapter_files, adapter_path

CATEGORY = "EDiT"


class EDiTAdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EDiTAdapterLoader",
            display_name="Load EDiT Adapter",
            category=CATEGORY,
            description="Loads an EDiT / MM-EDiT adapter (.safetensors from models/edit): the small trained "
                        "modules that turn a PixArt-Sigma or SD3.5-Medium model's attention into linear "
                        "compressed attention. Files are validated, never unpickled.",
            inputs=[
                io.Combo.Input("adapter_name", options=adapter_files(),
                               tooltip="Adapter file in models/edit (made by distillation or "
                                       "'python -m edit_core init-adapter'). Only .safetensors files are listed."),
            ],
            outputs=[EDiTAdapterType.Output(display_name="EDIT_ADAPTER",
                                            tooltip="The adapter; connect it to Apply EDiT Attention.")],
        )

    @classmethod
    def execute(cls, adapter_name: str) -> io.NodeOutput:
        return io.NodeOutput(load_adapter(adapter_path(adapter_name)))


class EDiTApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="EDiTApply",
            display_name="Apply EDiT Attention",
            category=CATEGORY,
            description="Returns a copy of the MODEL whose self-attention (PixArt-Sigma, PixArt-Alpha) or joint "
                        "attention (SD3-Medium, SD3.5-Medium, SD3.5-Large; hybrid: image↔image linear, anything with "
                        "text softmax) is replaced by "
                        "the adapter's EDiT attention: cost grows linearly with the image size. The input MODEL "
                        "is left untouched; LoRAs and other weight patches keep working.",
            inputs=[
                io.Model.Input("model", tooltip="A PixArt-Sigma, PixArt-Alpha, SD3-Medium, SD3.5-Medium or SD3.5-Large "
                                                "diffusion model."),
                EDiTAdapterType.Input("adapter", tooltip="From Load EDiT Adapter; it must be made for this model "
                                                         "(same family, block count and width)."),
                io.Combo.Input("backend", options=list(BACKENDS), default="auto",
                               tooltip="Linear-attention kernels: auto picks the fastest available (Triton on "
                                       "NVIDIA GPUs when installed, else PyTorch); torch forces PyTorch; triton "
                                       "forces the Triton kernels (errors if unavailable)."),
                io.Combo.Input("eta", options=list(ETA_CHOICES), default="adapter default",
                               tooltip="SD3 / SD3.5 only: how image rows mix linear image↔image and softmax image→text "
                                       "attention. approx: N_image/(N_image+N_text) (the paper's default); exact: "
                                       "from the two normalisers. adapter default: what the adapter was trained with."),
                io.Combo.Input("convert_attn2", options=list(ATTN2_CHOICES), default="adapter default",
                               tooltip="SD3.5-Medium only: convert the image-only attn2 layers (blocks 0-12) the "
                                       "adapter covers, or keep them as softmax attention (off)."),
                io.Int.Input("start_block", default=0, min=0, max=1000, optional=True,
                             tooltip="First block to convert (0-based). Blocks outside the range keep their "
                                     "original attention."),
                io.Int.Input("end_block", default=-1, min=-1, max=1000, optional=True,
                             tooltip="Last block to convert, inclusive; -1 = the last block."),
            ],
            outputs=[io.Model.Output(tooltip="The MODEL with EDiT attention (a patched copy).")],
        )

    @classmethod
    def execute(cls, model, adapter, backend: str = "auto", eta: str = "adapter default",
                convert_attn2: str = "adapter default", start_block: int = 0, end_block: int = -1) -> io.NodeOutput:
        try:
            patched = apply_edit(model, adapter, backend=backend, eta=eta, convert_attn2=convert_attn2,
                                 start_block=start_block, end_block=end_block)
        except ValueError as e:  # a mismatched adapter or an unsupported model: say so on the node too
            send_event(APPLY_EVENT, apply_report(adapter, None, "; ".join(getattr(e, "problems", ())) or str(e)))
            raise
        send_event(APPLY_EVENT, apply_report(adapter, patched.get_attachment(ATTACHMENT_KEY), None))
        return io.NodeOutput(patched)


def apply_report(adapter, applied, error) -> dict:
    """The ``edit.apply`` event: the adapter's and the model's family, or the error that refused them."""
    report = {"ok": error is None, "adapter_family": adapter.config.family, "adapter_title": adapter.config.title}
    if error is not None:
        return {**report, "error": error}
    return {**report, "model_family": applied.spec.family, "model_title": applied.spec.title,
            "layers": len(applied.config.layers())}
