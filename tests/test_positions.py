"""positions.py: the 3x3 grid and its names."""

import pytest

from mmcof_gen.positions import cell_box, cell_named, cell_of, position_name


def test_grid_cells_and_names():
    assert cell_of((10, 10, 20, 20), 300, 300) == (0, 0)
    assert position_name((2, 0)) == "bottom left"
    assert cell_named("right") == (1, 2)
    assert cell_box((2, 0), 517, 391) == (0, 260, 172, 391)
    assert cell_of((95, 10, 105, 20), 300, 300, margin=0.04) is None  # centre x=100 is on the first grid line
    with pytest.raises(ValueError, match="unknown position"):
        cell_named("somewhere")
