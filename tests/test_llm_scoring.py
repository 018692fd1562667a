"""Scene schema and scoring on hand-computed cases."""

from __future__ import annotations

import math
import re

import pytest

from llm_decode.schema import (
    DecodedObject,
    DecodedScene,
    SceneParseError,
    parse_answer,
    scene_json_schema,
    split_reasoning,
)
from llm_decode.scoring import (
    ScoringOptions,
    average_precision,
    match_objects,
    score_scene,
    summarize_scores,
)
from strop.scenes import Scene, SceneObject


def obj(color="r", shape="cu", size="S", material="R", x=0.0, y=0.0) -> DecodedObject:
    return DecodedObject(color=color, shape=shape, size=size, material=material, x=x, y=y)


TRUE = DecodedScene(
    objects=[
        obj("r", "cu", "S", "R", -2.0, -2.0),
        obj("bl", "sp", "L", "M", 2.0, 2.0),
        obj("cy", "cy", "S", "M", 2.0, -2.0),
    ]
)


# ----------------------------------------------------------------------------- schema


def test_scene_round_trip_uses_paper_abbreviations():
    scene = Scene(
        image_index=3,
        image_filename="x.png",
        split="val",
        objects=[
            SceneObject(
                color="cyan",
                shape="cylinder",
                material="metal",
                size="large",
                coords_3d=(1.234, -0.5, 0.7),
            ),
            SceneObject(
                color="gray", shape="cube", material="rubber", size="small", coords_3d=(0, 1, 0.2)
            ),
        ],
    )
    decoded = DecodedScene.from_scene(scene)
    assert decoded.objects[0].attributes() == ("cy", "cy", "L", "M")
    assert decoded.objects[1].attributes() == ("gr", "cu", "S", "R")
    assert '"x":1.23' in decoded.to_prompt_json()
    back = decoded.to_scene(image_index=3)
    assert [o.color for o in back.objects] == ["cyan", "gray"]
    assert back.objects[0].coords_3d == pytest.approx((1.234, -0.5, 0.7))
    assert back.objects[1].coords_3d[2] == pytest.approx(0.35 / math.sqrt(2))  # small cube


def test_parse_answer_strips_think_fences_and_prose():
    body = '{"objects": [{"color": "red", "shape": "sp", "size": "L", "material": "M", "x": 1, "y": 2}]}'
    for text in (
        body,
        f"<think>count the codes</think>\n{body}",
        f"Sure! Here it is:\n```json\n{body}\n```\nHope that helps.",
        f"reasoning without an opening tag</think>{body}",
    ):
        scene = parse_answer(text)
        assert scene.objects[0].color == "r"  # full name read as its abbreviation
    answer, reasoning = split_reasoning(f"<think>a</think>{body}")
    assert answer == body and reasoning == "a"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", "empty"),
        ("<think>never finished", "empty"),
        ("the scene has three cubes", "not JSON"),
        (
            '{"objects": [{"color": "magenta", "shape": "cu", "size": "S", "material": "R", "x": 0, "y": 0}]}',
            "objects[0].color",
        ),
        (
            '{"objects": [{"color": "r", "shape": "cu", "size": "S", "material": "R", "x": 0}]}',
            "objects[0].y",
        ),
        (
            '{"objects": [{"color": "r", "shape": "cu", "size": "S", "material": "R", "x": "left", "y": 0}]}',
            "objects[0].x",
        ),
    ],
)
def test_parse_answer_errors_name_the_field(text, expected):
    with pytest.raises(SceneParseError, match=re.escape(expected)) as info:
        parse_answer(text)
    assert "\n" not in str(info.value)


def test_json_schema_is_strict():
    schema = scene_json_schema()
    assert schema["required"] == ["objects"]
    assert schema["additionalProperties"] is False
    item = schema["$defs"]["DecodedObject"]
    assert item["additionalProperties"] is False
    assert set(item["required"]) == {"color", "shape", "size", "material", "x", "y"}
    assert item["properties"]["color"]["enum"] == ["gr", "r", "bl", "gn", "br", "pr", "cy", "y"]


# ----------------------------------------------------------------------------- scoring


def test_perfect_prediction():
    score = score_scene(TRUE, TRUE)
    assert (score.count_err, score.attr_acc, score.pos_mse, score.pos_mae) == (0, 1.0, 0.0, 0.0)
    for t in (math.inf, 1, 0.5, 0.25, 0.125):
        assert average_precision([TRUE], [TRUE], t) == pytest.approx(1.0)


def test_swapped_objects_still_match():
    swapped = DecodedScene(objects=[TRUE.objects[2], TRUE.objects[0], TRUE.objects[1]])
    assert sorted(match_objects(swapped, TRUE)) == [(0, 2), (1, 0), (2, 1)]
    score = score_scene(swapped, TRUE)
    assert score.attr_acc == 1.0 and score.pos_mse == 0.0
    assert average_precision([swapped], [TRUE], 0.125) == pytest.approx(1.0)


def test_missing_object():
    pred = DecodedScene(objects=TRUE.objects[:2])
    score = score_scene(pred, TRUE, ScoringOptions(attr_accuracy="matched"))
    assert score.count_err == 1 and score.n_matched == 2 and score.attr_acc == 1.0
    # the default counts the missing true object as wrong on all four attributes
    assert score_scene(pred, TRUE).attr_acc == pytest.approx(2 / 3)
    histogram = score_scene(pred, TRUE, ScoringOptions(attr_accuracy="histogram"))
    assert histogram.attr_acc == pytest.approx(2 / 3)
    # two true positives out of three true objects: precision 1 up to recall 2/3
    assert average_precision([pred], [TRUE], math.inf) == pytest.approx(2 / 3)


def test_extra_object_and_wrong_attributes():
    extra = obj("y", "sp", "L", "R", 0.0, 0.0)
    pred = DecodedScene(objects=[TRUE.objects[0], extra, TRUE.objects[1], TRUE.objects[2]])
    score = score_scene(pred, TRUE)
    assert score.count_err == 1 and score.n_matched == 3 and score.attr_acc == 1.0
    # ranked in answer order: tp, fp, tp, tp -> precision 1, .5, .667, .75 at recall 1/3..1;
    # interpolated: 1 over the first third, .75 over the other two thirds.
    assert average_precision([pred], [TRUE], math.inf) == pytest.approx(1 / 3 + 0.75 * 2 / 3)
    wrong = DecodedScene(objects=[obj("gn", "cu", "S", "R", -2.0, -2.0), *TRUE.objects[1:]])
    score = score_scene(wrong, TRUE)
    assert score.attr_acc == pytest.approx(11 / 12)
    assert score.attr_acc_by["color"] == pytest.approx(2 / 3)


def test_position_errors_and_thresholds():
    moved = DecodedScene(
        objects=[o.model_copy(update={"x": o.x + 0.36, "y": o.y - 0.48}) for o in TRUE.objects]
    )
    score = score_scene(moved, TRUE, ScoringOptions(position_error="coordinate"))
    assert score.pos_mse == pytest.approx((0.36**2 + 0.48**2) / 2)
    assert score.pos_mae == pytest.approx(0.42)
    # Euclidean: |d| = 0.6 for every object; mixed: MSE per coordinate, MAE Euclidean.
    score = score_scene(moved, TRUE, ScoringOptions(position_error="euclidean"))
    assert (score.pos_mse, score.pos_mae) == (pytest.approx(0.36), pytest.approx(0.6))
    score = score_scene(moved, TRUE)  # the default: mixed
    assert (score.pos_mse, score.pos_mae) == (pytest.approx(0.18), pytest.approx(0.6))
    assert score.pos_mse < score.pos_mae**2  # possible only under mixed (Table 16's naive row)
    # each prediction is 0.6 away: a hit within 1, a miss within 0.5
    aps = {t: average_precision([moved], [TRUE], t) for t in (math.inf, 1, 0.5, 0.25)}
    assert aps[math.inf] == pytest.approx(1.0) and aps[1] == pytest.approx(1.0)
    assert aps[0.5] == 0.0 and aps[0.25] == 0.0


def test_duplicate_predictions_claim_one_object():
    twice = DecodedScene(objects=[TRUE.objects[0], TRUE.objects[0]])
    # tp then fp; recall reaches 1/3 only
    assert average_precision([twice], [TRUE], math.inf) == pytest.approx(1 / 3)


def test_summary_excludes_parse_failures_from_means_but_not_recall():
    half = DecodedScene(objects=TRUE.objects[:1])
    summary = summarize_scores([TRUE, None, half], [TRUE, TRUE, TRUE])
    assert summary["n"] == 3 and summary["parse_fails"] == 1
    assert summary["count_err"] == pytest.approx(1.0)  # mean of 0 and 2
    assert summary["attr_acc"] == pytest.approx((1 + 1 / 3) / 2)  # over true objects
    assert summary["ap"]["inf"] == pytest.approx(4 / 9)  # 4 true positives of 9 objects
    assert set(summary["ap"]) == {"inf", "1", "0.5", "0.25", "0.125"}


def test_empty_prediction_has_no_matched_scores():
    empty = DecodedScene(objects=[])
    score = score_scene(empty, TRUE, ScoringOptions(attr_accuracy="matched"))
    assert score.count_err == 3 and score.attr_acc is None and score.pos_mse is None
    score = score_scene(empty, TRUE)  # over true objects: all three wrong
    assert score.attr_acc == 0.0 and score.pos_mse is None


def test_matching_options_pair_objects_by_what_they_say():
    # Two predictions, each at the other's true position with the other's attributes.
    a, b = TRUE.objects[0], TRUE.objects[1]
    pred = DecodedScene(
        objects=[
            a.model_copy(update={"x": b.x, "y": b.y}),
            b.model_copy(update={"x": a.x, "y": a.y}),
        ]
    )
    true = DecodedScene(objects=[a, b])
    assert sorted(match_objects(pred, true, "position")) == [(0, 1), (1, 0)]
    assert sorted(match_objects(pred, true, "attributes")) == [(0, 0), (1, 1)]
    assert sorted(match_objects(pred, true, "index")) == [(0, 0), (1, 1)]
    by_position = score_scene(pred, true, ScoringOptions(matching="position"))
    by_attributes = score_scene(pred, true, ScoringOptions(matching="attributes"))
    assert by_position.pos_mse == 0.0 and by_position.attr_acc == 0.0  # all four differ
    assert by_attributes.attr_acc == 1.0 and by_attributes.pos_mse > 0
    # joint: four attribute mismatches (weight 1) against a distance of 4 sqrt 2 / 6 (~0.94)
    assert sorted(match_objects(pred, true, "joint")) == [(0, 0), (1, 1)]
    with pytest.raises(ValueError, match="matching"):
        match_objects(pred, true, "colour")  # type: ignore[arg-type]


def test_summary_records_the_scoring_options():
    options = ScoringOptions(matching="joint", position_error="euclidean")
    summary = summarize_scores([TRUE], [TRUE], options)
    assert summary["scoring"] == {
        "matching": "joint",
        "position_error": "euclidean",
        "attr_accuracy": "true",
    }
    assert summarize_scores([TRUE], [TRUE])["scoring"] == ScoringOptions().model_dump()
