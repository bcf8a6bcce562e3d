"""``checks.account_id``: every form an account id arrives in (int, digit string, the integral
double a Collector's filelog parser makes of a number) and every form it is refused in."""

from __future__ import annotations

import json
import math
import os
from urllib.parse import quote

import pytest

from vwo_otel import checks
from vwo_otel.servers import otlp


@pytest.mark.parametrize("value, expected", [
    (123456, 123456),
    ("123456", 123456),
    (123456.0, 123456),          # filelog's json_parser without parse_ints: true
    (1.0, 1),
    (float(2**53), 2**53),       # the largest float that still names exactly one integer
    (2**63 - 1, 2**63 - 1),
    ("9223372036854775807", 2**63 - 1),
])
def test_account_id_accepts_ints_digit_strings_and_integral_floats(value, expected):
    got = checks.account_id(value)
    assert got == expected and type(got) is int


@pytest.mark.parametrize("value", [
    123456.5, math.nan, math.inf, -math.inf, -123456.0, 0.0, -0.0, float(2**53 + 2), 1e19, float(2**63),
    True, False, 0, -1, 2**63, 2**64, "0x10", "", " 1", "1.0", "123456.0", "１２３", "1" * 20, None, [1], b"1",
])
def test_account_id_refuses_everything_else_naming_the_field_and_range(value):
    with pytest.raises(ValueError) as info:
        checks.account_id(value, "vwo.account_id")
    message = str(info.value)
    assert message.startswith("vwo.account_id must be a positive int below 2**63")
    assert "integral float up to 2**53" in message and repr(value) in message


def _pb_logs_with_double_account(value: float) -> bytes:
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(KeyValue(key=otlp.ACCOUNT_ID, value=AnyValue(double_value=value)))
    record = resource_logs.scope_logs.add().log_records.add()
    record.attributes.append(KeyValue(key="vwo.event.type", value=AnyValue(int_value=1)))
    return request.SerializeToString()


@pytest.mark.skipif(not otlp.protobuf_available(), reason="opentelemetry-proto is not installed")
def test_a_double_account_id_from_protobuf_reaches_the_check_as_a_float():
    decoded = otlp.decode(otlp.LOGS, otlp.PROTOBUF, _pb_logs_with_double_account(123456.0))
    (group,) = decoded.groups
    assert type(group.account) is float and checks.account_id(group.account) == 123456


def test_a_double_account_id_from_json_reaches_the_check_as_a_float():
    doc = {"resourceLogs": [{"resource": {"attributes": [
        {"key": otlp.ACCOUNT_ID, "value": {"doubleValue": 123456}}]},  # JSON writes 123456.0 as 123456
        "scopeLogs": [{"logRecords": [{"attributes": [{"key": "vwo.event.type", "value": {"intValue": "1"}}]}]}]}]}
    (group,) = otlp.decode(otlp.LOGS, otlp.JSON, json.dumps(doc).encode()).groups
    assert type(group.account) is float and checks.account_id(group.account) == 123456


def test_the_filelog_example_keeps_ints_and_names_the_account_as_a_string():
    yaml = pytest.importorskip("yaml")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "examples", "collector", "filelog.yaml"), encoding="utf-8") as f:
        cfg = yaml.safe_load(f)
    (receiver,) = cfg["receivers"].values()
    parsers = [op for op in receiver["operators"] if op["type"] == "json_parser"]
    assert parsers and all(op["parse_ints"] is True for op in parsers)  # else 231 arrives as 231.0: malformed
    assert checks.account_id(receiver["resource"]["vwo.account_id"]) and isinstance(
        receiver["resource"]["vwo.account_id"], str)  # a string routes the same on every Collector release
    for pipeline in cfg["service"]["pipelines"].values():
        assert all(name in cfg[kind] for kind in ("receivers", "processors", "exporters") for name in pipeline[kind])


@pytest.mark.parametrize("echo", [
    "bad key {k}", "bad key {K}", '{{"error": "bad key {j}"}}', "bad key {u}", "env={k}&a=1",
])
def test_redact_takes_the_key_out_of_what_a_server_echoes(echo):
    key = 'ab"cd\\ef-0123456789abcdef'
    forms = {"k": key, "K": key.upper(), "j": json.dumps(key)[1:-1], "u": quote(key, safe="")}
    out = checks.redact(echo.format(**forms), key)
    assert "***" in out and not any(form.lower() in out.lower() for form in forms.values()), out


@pytest.mark.parametrize(("message", "key", "expected"), [
    ("bad key k in a keyword", "k", "bad key *** in a keyword"),
    ("Authorization: abc123 refused; abc1234 is another token", "abc123",
     "Authorization: *** refused; abc1234 is another token"),
    ('{"sdk_key":"ABC123","env":"x"}', "abc123", '{"sdk_key":"***","env":"x"}'),
])
def test_redact_masks_the_key_as_a_token_not_the_letters_of_other_words(message, key, expected):
    assert checks.redact(message, key) == expected


@pytest.mark.parametrize("echo", ["x{k}y", "Authorization: {k}0", "token={k}abc", "{K}_1"])
def test_redact_masks_a_full_length_key_wherever_it_stands(echo):
    """Only a short key (a test key) is masked as a token: a real key's 32 characters match no
    word by chance, so it is masked even glued to letters or digits (a server's echo)."""
    key = "abcdef0123456789abcdef0123456789"
    out = checks.redact(echo.format(k=key, K=key.upper()), key)
    assert key not in out.lower() and "***" in out, out


@pytest.mark.parametrize("echo", [
    lambda k: "redirect_uri=" + quote(f"/server-side/track-user?a=1&env={k}", safe=""),  # after %3D
    lambda k: quote(f'{{"sdk_key":"{k}"}}', safe=""),  # URL-encoded JSON: after %22
    lambda k: f'{{"log":"headers:\\n{k}"}}',  # after a JSON escape
    lambda k: k + k, lambda k: "Bearer" + k.upper(), lambda k: k + "00ff",
], ids=["url-as-query-value", "url-encoded-json", "json-escape", "twice", "glued-upper", "hex-after"])
def test_redact_masks_a_real_length_key_glued_to_letters_or_digits(echo):
    """A key of VWO's length is masked wherever it appears: next to a percent-escape's or a JSON
    escape's letter it still stands as a token, and a coincidence is no likelier than the key."""
    key = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
    out = checks.redact(echo(key), key)
    assert key not in out.lower() and "***" in out, out


def test_excerpt_quotes_the_start_of_an_answer_redacted_and_leaves_out_a_key_cut_short():
    key = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
    assert checks.excerpt(f"bad key {key}!", key) == "bad key ***!"  # read whole: nothing left out
    assert checks.excerpt("x" * 5000, key) == "x" * 200
    cut = "env=" + "y" * (4096 - 5 - 31) + "&" + key  # what is read ends one character before the key's end
    assert checks.excerpt(cut, key) == "env=***&"
    assert checks.excerpt(cut, key, length=5) == "env=*"


@pytest.mark.parametrize("spelling", ["HTTP://127.0.0.1", "http://127.0.0.1:80", "http://127.0.0.1/", "Http://127.0.0.1:80/"])
def test_one_endpoint_has_one_spelling(spelling):
    """A spool file records its endpoint: a process writing the same one another way adopts it."""
    assert checks.endpoint(spelling) == "http://127.0.0.1"
    assert checks.endpoint("https://DEV.example.com:443/eu01/") == "https://dev.example.com/eu01"


@pytest.mark.parametrize("bad", [1.5, b"user-bytes", ["user-list"]])
def test_a_user_id_of_another_type_is_told_both_types_taken_never_shown(bad):
    """Ints are taken (as VWO's SDK takes them); the error said only str."""
    assert checks.user_id(42) == "42"
    with pytest.raises(TypeError, match=r"user_id must be a non-empty str \(or an int\)") as info:
        checks.user_id(bad)
    assert repr(bad) not in str(info.value)
