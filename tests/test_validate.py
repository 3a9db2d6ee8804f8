import numpy as np
import pytest

from shardprune.errors import ConfigError, DatasetError
from shardprune.validate import check_bool, check_choice, check_float, check_int


def test_check_int_accepts_and_normalises() -> None:
    assert check_int("n", np.int64(3), 1) == 3
    assert type(check_int("n", np.int64(3), 1)) is int
    assert check_int("n", 5, 0, 5) == 5


@pytest.mark.parametrize("value", [True, 1.0, "2", None, 0, 6])
def test_check_int_refuses_with_name_value_and_range(value: object) -> None:
    with pytest.raises(ConfigError) as e:
        check_int("batch_size", value, 1, 5, fix="pass a positive count")
    assert str(e.value) == f"batch_size={value!r} must be an int in [1, 5]; pass a positive count"


def test_check_float_ranges() -> None:
    assert check_float("r", 0.5, 0.0, 1.0, high_open=True) == 0.5
    with pytest.raises(ConfigError, match=r"r=1.0 must be a finite number in \[0.0, 1.0\)"):
        check_float("r", 1.0, 0.0, 1.0, high_open=True)
    with pytest.raises(ConfigError, match="must be a finite number > 0"):
        check_float("lr", 0, 0, low_open=True)
    with pytest.raises(ConfigError):
        check_float("x", float("nan"))
    with pytest.raises(DatasetError):
        check_float("x", True, error=DatasetError)


def test_check_bool_and_choice() -> None:
    assert check_bool("b", np.bool_(True)) is True
    with pytest.raises(ConfigError, match="b=1 must be True or False"):
        check_bool("b", 1)
    assert check_choice("mode", "a", ("a", "b")) == "a"
    with pytest.raises(ConfigError, match="mode='c' is not one of a, b"):
        check_choice("mode", "c", ("a", "b"))
