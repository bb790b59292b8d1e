"""The ``models/edit`` folder for adapter files (safetensors only).

``extra_model_paths.yaml`` is read before custom nodes load, so an ``edit:`` entry there may already
exist: its paths are kept and ours is appended.
"""

from __future__ import annotations

import os

import folder_paths

FOLDER_NAME = "edit"
EXTENSIONS = {".safetensors"}


def register_model_folder() -> str:
    """Idempotent. Returns the default folder path (``<models>/edit``)."""
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    folder_paths.add_model_folder_path(FOLDER_NAME, default)
    paths, _ = folder_paths.folder_names_and_paths[FOLDER_NAME]
    folder_paths.folder_names_and_paths[FOLDER_NAME] = (paths, set(EXTENSIONS))
    return default


def adapter_files() -> list[str]:
    register_model_folder()
    return folder_paths.get_filename_list(FOLDER_NAME)


def adapter_path(name: str) -> str:
    register_model_folder()
    return folder_paths.get_full_path_or_raise(FOLDER_NAME, name)
