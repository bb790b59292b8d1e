import pickle

import pytest
import torch
from safetensors.torch import save_file

from edit_core.safetensors_file import SafetensorsFileError, read_shapes


def test_shapes_and_dtypes_come_from_the_header_alone(tmp_path):
    path = str(tmp_path / "t.safetensors")
    save_file({"a": torch.zeros(3, 5, dtype=torch.bfloat16), "b": torch.zeros(7, dtype=torch.int64)}, path,
              metadata={"k": "v"})
    shapes, metadata = read_shapes(path)
    assert {k: (tuple(v.shape), v.dtype, v.device.type) for k, v in shapes.items()} == {
        "a": ((3, 5), torch.bfloat16, "meta"), "b": ((7,), torch.int64, "meta")}
    assert metadata == {"k": "v"}


def test_pickles_and_garbage_are_named_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("the file was unpickled",))

    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps(Boom(), protocol=4))
    with pytest.raises(SafetensorsFileError, match="evil.safetensors.*never unpickled"):
        read_shapes(str(evil))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00[1,2]")
    with pytest.raises(SafetensorsFileError, match="not a JSON object"):
        read_shapes(str(junk))
