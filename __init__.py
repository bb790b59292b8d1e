"""ComfyUI-EDiT: EDiT linear compressed attention for PixArt-Sigma and MM-EDiT hybrid attention for
SD3.5-Medium, as ComfyUI nodes (V3 API).

Importing this file does nothing heavy and imports nothing from ComfyUI; ComfyUI calls
``comfy_entrypoint`` at start-up, and the node modules are imported only then.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import EDiTExtension

    return EDiTExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
