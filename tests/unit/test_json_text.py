"""The engine's stdlib JSON writes what orjson wrote, byte for byte, and reads as strictly.

Pods in clusters carry status annotations and digests orjson wrote; an
encoder that differed by a byte would make every one of them look outdated.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.profiles import examples
from webhook.engine.frozen import freeze
from webhook.engine.json_text import canonical, compact, strict_loads
from webhook.engine.status import InjectionStatus, StatusError

# Everything orjson can write: no unpaired surrogates, 64-bit integers.
strings = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1), strings
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(strings, inner, max_size=4),
    ),
    max_leaves=30,
)
PROPERTY = settings(max_examples=examples(400), deadline=None)


@PROPERTY
@given(documents)
def test_compact_is_orjsons_default_output(value: Any) -> None:
    assert compact(value) == orjson.dumps(value).decode()
    assert compact(freeze(value)) == orjson.dumps(value).decode()


@PROPERTY
@given(documents)
def test_canonical_is_orjsons_sorted_output(value: Any) -> None:
    assert canonical(value) == orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    assert canonical(freeze(value)) == orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def test_control_characters_and_text_are_written_as_orjson_writes_them() -> None:
    text = 'a\x00\x08\t\n\x1f\x7f"\\/\u2028é😀'
    assert compact({"k": text}) == orjson.dumps({"k": text}).decode()
    assert "é😀" in compact(text), "UTF-8, not \\u escapes"


@PROPERTY
@given(documents)
def test_what_orjson_wrote_reads_back_alike(value: Any) -> None:
    written = orjson.dumps(value).decode()
    assert strict_loads(written) == orjson.loads(written)


def _orjson_accepts(text: str) -> bool:
    try:
        orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return True


def _accepts(text: str) -> bool:
    try:
        strict_loads(text)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(
    "text",
    [
        "NaN", "Infinity", "-Infinity", '{"v":NaN}', "[1e400]", "-1e400", "1" + "0" * 400,
        "[" + "9" * 5000 + "]", '"\\ud800"', '["\\udc00\\ud800"]', '{"\\udfff":1}',
        '"\\ud83d"', '"\ud800"', "\ufeff{}", "{} x", "[1,]", '"\t"', "1e308", "1e-400",
        '"\\ud83d\\ude00"', "18446744073709551616", "-0", " [ ] ", "",
    ],
)  # fmt: skip
def test_strict_loads_accepts_what_orjson_accepts_and_nothing_else(text: str) -> None:
    assert _accepts(text) == _orjson_accepts(text)


@settings(max_examples=examples(600), deadline=None)
@given(st.text(st.sampled_from('[]{}",:019.eE+-\\u dDfFNaIity'), max_size=24))
def test_strict_loads_agrees_with_orjson_on_json_ish_noise(text: str) -> None:
    assert _accepts(text) == _orjson_accepts(text)


def test_a_status_nested_beyond_the_parsers_recursion_is_not_json_rather_than_a_crash() -> None:
    for text in ("[" * 10_000, '{"a":' * 3000):
        with pytest.raises(StatusError, match="is not JSON"):
            InjectionStatus.parse(text)


def test_a_status_with_an_unpaired_surrogate_is_not_json() -> None:
    with pytest.raises(StatusError, match="is not JSON"):
        InjectionStatus.parse('{"version":"\\ud800"}')
    assert InjectionStatus.parse('{"version":"\\ud83d\\ude00"}').version == "😀"
