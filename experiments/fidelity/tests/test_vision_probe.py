"""fidelity/vision_probe.py's colour screens: the named square is the one the answer clicks."""

from __future__ import annotations


def test_vision_probe_colour_screens_name_one_square_and_click_inside_it():
    import random

    from fidelity import vision_probe as probe
    from fidelity.pretrain_tasks import POSITIONS
    from fidelity.shapes import COLORS
    from imagelora_dist.eval.metrics import grounding_hit

    for i in range(40):
        task, img, question, answer, record = probe.make_item(i, ["colour_click"], 336, 252)
        colour = question.removeprefix("Click the ").removesuffix(" square.")
        x0, y0, x1, y1 = record["bbox"]
        assert task == "colour_click" and colour in COLORS and img.size == (336, 252)
        assert img.getpixel(((x0 + x1) // 2, (y0 + y1) // 2)) == COLORS[colour]
        assert grounding_hit(answer, record)  # the answer is the named square's centre
        # the other squares: other colours, so the name picks exactly one
        colours = {c for _, c in img.getcolors(1 << 16)} & set(COLORS.values())
        assert 1 <= len(colours) <= 3
    # the grid question on the same screens as the click (the index fixes the screen)
    _, grid_img, grid_q, grid_a, _ = probe.colour_click_sample(random.Random(3), 336, 252, "colour_grid")
    _, click_img, click_q, _, _ = probe.colour_click_sample(random.Random(3), 336, 252)
    assert list(grid_img.getdata()) == list(click_img.getdata())
    assert grid_q.replace("Where is", "Click").removesuffix("?") + "." == click_q
    assert grid_a in {name for row in POSITIONS for name in row}
