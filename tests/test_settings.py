"""The pruning settings' one validation (bavit.pruning.settings), and every entry point giving its answer."""
from __future__ import annotations

import math

import numpy as np
import pytest

import apphelpers
from bavit.app.explorer import Explorer
from bavit.app.session import MODE_THRESHOLD, Controls
from bavit.errors import ConfigError, DataError
from bavit.imageio import load_image
from bavit.predictor import Predictor
from bavit.pruning.settings import PruningSettings, cca_steps_value, number, threshold_value

CHELSEA = apphelpers.EXAMPLES / "chelsea.jpg"


@pytest.mark.parametrize("value, expected", [(0.25, 0.25), (1, 1.0), ("0.5", 0.5), (" 0.75 ", 0.75),
                                             (np.float32(0.5), 0.5), (np.int64(1), 1.0)])
def test_number_takes_numbers_and_numeric_text(value, expected):
    assert number("x", value) == expected


@pytest.mark.parametrize("value, message", [
    (True, r"x must be a number, got True"), (None, "x must be a number, got a NoneType"),
    ("abc", r"x must be a number, got 'abc'"), (math.inf, "x must be a finite number, got inf"),
    (math.nan, "finite"), ("nan", "finite"), ([0.5], "got a list"), (np.bool_(True), "must be a number"),
    (10 ** 400, r"^x must be a finite number, got an integer of 1329 bits$"),  # float(int) overflows
    ("1" * 500, r"^x must be a finite number, got 1111111111111111111111111111111111111111$"),
])
def test_number_refuses_what_is_not_a_finite_number(value, message):
    with pytest.raises(ConfigError, match=message):
        number("x", value)


def test_cca_steps_are_whole_numbers_never_truncated():
    assert cca_steps_value(2.0) == 2 and cca_steps_value("3") == 3 and cca_steps_value(0) == 0
    for bad in (2.5, -1, 11, math.inf, True, "two"):
        with pytest.raises(ConfigError, match="cca_steps"):
            cca_steps_value(bad)


def test_settings_hold_one_selection():
    assert PruningSettings().selection == {"threshold": 0.5}
    assert PruningSettings(keep_ratio="0.3", cca_steps=2.0) == PruningSettings(keep_ratio=0.3, cca_steps=2)
    assert PruningSettings(sparsity=0.35).selection == {"sparsity": 0.35}
    assert PruningSettings(image_sparsity="0.35").selection == {"image_sparsity": 0.35}
    assert [PruningSettings(**s).top_k for s in ({}, {"keep_ratio": 0.3}, {"image_sparsity": 0.3}, {"sparsity": 0.3})] \
        == [False, True, True, False]
    with pytest.raises(ConfigError, match="not both threshold and keep_ratio"):
        PruningSettings(threshold=0.5, keep_ratio=0.3)
    with pytest.raises(ConfigError, match="not both keep_ratio and image_sparsity"):
        PruningSettings(keep_ratio=0.5, image_sparsity=0.3)
    for field, bad in (("threshold", 1.5), ("keep_ratio", 0.0), ("keep_ratio", 1.2), ("sparsity", 1.0),
                       ("sparsity", -0.1), ("image_sparsity", 0.96), ("image_sparsity", -0.1)):
        with pytest.raises(ConfigError, match=field):
            PruningSettings(**{field: bad})


def test_the_command_line_parses_settings_with_the_same_rules(capsys):
    from bavit.cli import build_parser

    args = build_parser().parse_args(["evaluate", "--checkpoint", "c", "--threshold", "0.4", "--cca-steps", "2.0"])
    assert (args.threshold, args.cca_steps) == (0.4, 2)
    assert build_parser().parse_args(["evaluate", "--checkpoint", "c"]).cca_steps == 3  # the one default
    for bad in (["--cca-steps", "6"], ["--threshold", "1.5"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["evaluate", "--checkpoint", "c", *bad])
        assert "invalid" in capsys.readouterr().err


def test_the_api_form_treats_zero_as_off():
    assert PruningSettings.from_api(0.3, 2, 0, 0) == PruningSettings(threshold=0.3, cca_steps=2)
    assert PruningSettings.from_api(None, 3, None, None).threshold == 0.5
    assert PruningSettings.from_api(0.3, 3, 0.4, 0).selection == {"keep_ratio": 0.4}
    assert PruningSettings.from_api(0.3, 3, 0, 0.35).selection == {"sparsity": 0.35}
    with pytest.raises(ConfigError, match="not both"):
        PruningSettings.from_api(0.5, 3, 0.4, 0.35)
    with pytest.raises(ConfigError, match="threshold must be a number, got True"):
        PruningSettings.from_api(True, 3, 0, 0)  # JSON true is not 1.0
    with pytest.raises(ConfigError, match="keep_ratio must be a number"):
        PruningSettings.from_api(0.5, 3, False, 0)


BAD = [  # (setting, value, message): each entry point gives exactly this
    ("cca_steps", 2.5, "cca_steps is a whole number in 0..5, got 2.5"),
    ("cca_steps", -1, "cca_steps is a whole number in 0..5, got -1"),
    ("cca_steps", math.inf, "cca_steps must be a finite number, got inf"),
    ("threshold", True, "threshold must be a number, got True"),
    ("threshold", "abc", "threshold must be a number, got 'abc'"),
    ("threshold", 1.5, "threshold is a probability in [0, 1], got 1.5"),
]


@pytest.fixture(scope="module")
def explorer():
    return Explorer(Predictor(bavit=apphelpers.calibrated_bavit_checkpoint(), detector=None))


@pytest.mark.parametrize("name, value, message", BAD)
def test_every_entry_point_refuses_alike(explorer, name, value, message):
    settings = {"threshold": 0.5, "cca_steps": 3, name: value}
    calls = {  # the Predictor and the keep-mask rule take a PruningSettings: its construction is the one parse
        "PruningSettings": lambda: PruningSettings(**settings),
        "analyze API": lambda: explorer.api_result({"path": str(CHELSEA)}, **settings, detect=False),
        "app controls": lambda: Controls(mode=MODE_THRESHOLD, **{"threshold": 0.5, "cca_steps": 3, name: value}),
    }
    if name == "cca_steps":
        calls["calibration"] = lambda: explorer.predictor.calibration.threshold(0.35, value)
    for where, call in calls.items():
        with pytest.raises(ConfigError) as error:
            call()
        assert str(error.value) == message, where


def test_calibrated_sparsity_names_the_calibrated_range(explorer):
    with pytest.raises(ConfigError, match=r"sparsity must lie in this checkpoint's calibrated range \[0, 0.95\] "
                                          r"\(a fraction: 0.35 for 35%\), got 0.96"):
        explorer.api_result({"path": str(CHELSEA)}, sparsity=0.96, detect=False)


def test_threshold_value_takes_numeric_text():
    assert threshold_value("0.5") == 0.5


def test_error_texts_carry_no_object_addresses():
    for data in (b"these are not pixels", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40):
        with pytest.raises(DataError) as error:
            load_image(data)
        assert " at 0x" not in str(error.value) and str(error.value).startswith("image is")
