"""Weak labels on hand-made masks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from defectbench.data import weak_labels as wl


def square_mask() -> np.ndarray:
    mask = np.zeros((7, 9), dtype=np.uint8)
    mask[2:5, 3:6] = 1  # 3x3 square, rows 2-4, cols 3-5
    return mask


def test_image_label():
    assert wl.image_label(square_mask()) == 1
    assert wl.image_label(np.zeros((4, 4))) == 0


def test_boxes_of_two_components_with_eight_connectivity():
    mask = square_mask()
    mask[5, 6] = 1  # diagonal neighbour of (4, 5): same component under 8-connectivity
    mask[0, 0] = 1  # a second, one-pixel component
    boxes = wl.boxes(mask)
    np.testing.assert_array_equal(boxes, [[0, 0, 1, 1], [3, 2, 7, 6]])
    filled = wl.box_mask(boxes, mask.shape)
    assert filled[mask != 0].all() and filled.sum() == 1 + 4 * 4
    assert wl.boxes(np.zeros((3, 3))).shape == (0, 4)


def test_box_jitter_is_seeded_bounded_and_clipped():
    mask = np.zeros((20, 30), dtype=bool)
    mask[0:5, 25:30] = True
    mask[8:12, 8:14] = True
    tight = wl.boxes(mask)
    first = wl.boxes(mask, jitter=3, rng=np.random.default_rng(7))
    again = wl.boxes(mask, jitter=3, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(first, again)
    assert np.abs(first - tight).max() <= 3
    assert (first[:, [0, 2]] >= 0).all() and (first[:, [0, 2]] <= 30).all()
    assert (first[:, [1, 3]] >= 0).all() and (first[:, [1, 3]] <= 20).all()
    assert (first[:, 2] > first[:, 0]).all() and (first[:, 3] > first[:, 1]).all()
    many = np.stack([wl.boxes(mask, jitter=3, rng=np.random.default_rng(s)) for s in range(30)])
    assert len({tuple(b.ravel()) for b in many}) > 1
    with pytest.raises(ValueError, match="rng"):
        wl.boxes(mask, jitter=2)


def test_rotated_boxes_of_a_diagonal_bar_are_tighter_than_axis_aligned():
    mask = np.zeros((40, 40), dtype=np.uint8)
    for i in range(5, 35):
        mask[i, i - 1 : i + 2] = 1  # a 3-px thick diagonal line
    corners = wl.rotated_boxes(mask)
    assert corners.shape == (1, 4, 2)
    rotated = wl.rotated_box_mask(corners, mask.shape)
    axis = wl.box_mask(wl.boxes(mask), mask.shape)
    assert rotated[mask != 0].all()
    assert rotated.sum() < 0.5 * axis.sum()


def test_rotated_box_of_a_rectangle_is_the_rectangle_and_of_one_pixel_is_the_pixel():
    mask = square_mask()
    np.testing.assert_array_equal(wl.rotated_box_mask(wl.rotated_boxes(mask), mask.shape), mask != 0)
    dot = np.zeros((5, 5), dtype=np.uint8)
    dot[2, 3] = 1
    corners = wl.rotated_boxes(dot)
    np.testing.assert_allclose(corners[0], [[3, 2]] * 4)
    np.testing.assert_array_equal(wl.rotated_box_mask(corners, dot.shape), dot != 0)
    assert wl.rotated_box_mask(wl.rotated_boxes(np.zeros((4, 4))), (4, 4)).sum() == 0


def test_block_labels_thresholds():
    mask = np.zeros((8, 12), dtype=np.uint8)
    mask[0:4, 0:4] = 1  # block (0,0): 16/16 -> 1
    mask[0:2, 4:6] = 1  # block (0,1): 4/16 = 0.25 -> ignored
    mask[4, 8] = 1  # block (1,2): 1/16 -> normal
    mask[4:6, 0:4] = 1  # block (1,0): 8/16 = 0.5 -> 1 (>= eps_pos)
    labels = wl.block_labels(mask, block=4, eps_pos=0.5, eps_neg=0.1)
    assert labels.dtype == np.int8
    np.testing.assert_array_equal(labels, [[1, -1, 0], [1, 0, 0]])
    strict = wl.block_labels(mask, block=4, eps_pos=0.6, eps_neg=0.0)
    np.testing.assert_array_equal(strict, [[1, -1, 0], [-1, 0, -1]])
    with pytest.raises(ValueError):
        wl.block_labels(mask, eps_pos=0.1, eps_neg=0.5)


def test_block_labels_partial_edge_blocks_use_their_valid_pixels():
    mask = np.zeros((10, 8), dtype=np.uint8)
    mask[8:10, 0:4] = 1  # last block row holds 2 rows: fraction 1 in block (2, 0)
    np.testing.assert_array_equal(wl.block_labels(mask, block=4), [[0, 0], [0, 0], [1, 0]])


def test_box_and_image_block_labels():
    filled = wl.box_mask(np.array([[5, 0, 6, 1]]), (8, 16))
    np.testing.assert_array_equal(wl.box_block_labels(filled, 4, outside=1.0), [[0, -1, 0, 0], [0, 0, 0, 0]])
    # Sec. III-D1: a block mostly outside the boxes is normal; half outside is normal at outside = 0.5
    half = wl.box_mask(np.array([[2, 0, 8, 4], [8, 4, 11, 8]]), (8, 16))
    np.testing.assert_array_equal(wl.box_block_labels(half, 4, outside=0.5), [[0, -1, 0, 0], [0, 0, -1, 0]])
    with pytest.raises(ValueError, match="outside"):
        wl.box_block_labels(half, 4, outside=0.0)
    np.testing.assert_array_equal(wl.image_block_labels(filled, block=8), [[-1, -1]])
    np.testing.assert_array_equal(wl.image_block_labels(np.zeros((8, 16)), block=8), [[0, 0]])


def test_dilate_with_a_square_kernel():
    dot = np.zeros((7, 7), dtype=np.uint8)
    dot[3, 3] = 1
    assert wl.dilate(dot, 3).sum() == 9 and wl.dilate(dot, 3)[2:5, 2:5].all()
    assert wl.dilate(dot, 5).sum() == 25
    np.testing.assert_array_equal(wl.dilate(dot, 1), dot)


def test_segdec_weights_of_a_square():
    weights = wl.segdec_loss_weights(square_mask(), p=1, w_pos=3)
    # EDT of a 3x3 square: 2 at its centre, 1 on its border ring; the centre is the region maximum.
    assert weights[3, 4] == pytest.approx(3.0)
    assert weights[2, 3] == pytest.approx(1.5) and weights[4, 5] == pytest.approx(1.5)
    assert (weights[square_mask() == 0] == 1).all()
    squared = wl.segdec_loss_weights(square_mask(), p=2, w_pos=1)
    assert squared[2, 4] == pytest.approx(0.25)


def test_segdec_weights_normalise_per_region_and_handle_rings_and_single_pixels():
    mask = np.zeros((20, 20), dtype=np.uint8)
    mask[1:10, 1:10] = 1  # 9x9 square: EDT max 5
    mask[15, 15] = 1  # one-pixel region: its own max -> w_pos
    mask[12:19, 2:9] = 1  # 7x7 ring with a hole
    mask[14:17, 4:7] = 0
    weights = wl.segdec_loss_weights(mask, p=1, w_pos=2)
    assert weights[5, 5] == pytest.approx(2.0) and weights[1, 1] == pytest.approx(2 / 5)
    assert weights[15, 15] == pytest.approx(2.0)
    ring = weights[12:19, 2:9][mask[12:19, 2:9] != 0]
    assert ring.max() == pytest.approx(2.0) and ring.min() == pytest.approx(2 / np.sqrt(2))  # EDT 1 or sqrt 2
    assert weights[15, 5] == 1.0  # the hole is negative
    np.testing.assert_array_equal(wl.segdec_loss_weights(np.zeros((3, 3)), 2, 3), np.ones((3, 3)))
    np.testing.assert_array_equal(wl.segdec_loss_weights(np.ones((2, 2)), 2, 3), np.full((2, 2), 3.0))
