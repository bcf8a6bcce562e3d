"""``span_processor_from_env`` / ``log_processor_from_env`` take every processor argument the
constructors take, also those no ``VWO_*`` variable stands for (``block_when_full``,
``background``): a newcomer adding one got ``exporter_from_env() got an unexpected keyword
argument``, an error naming neither the function called nor the argument's home."""

from __future__ import annotations

import pytest
from conftest import ACCOUNT_ID, SDK_KEY

from vwo_otel import VWOLogRecordProcessor, VWOSpanProcessor
from vwo_otel.env import log_processor_from_env, span_processor_from_env

ENV = {"VWO_ACCOUNT_ID": str(ACCOUNT_ID), "VWO_SDK_KEY": SDK_KEY, "VWO_DISABLED": "true",
       "VWO_EVENTS_PER_REQUEST": "10"}


@pytest.mark.parametrize("make, cls", [(span_processor_from_env, VWOSpanProcessor),
                                       (log_processor_from_env, VWOLogRecordProcessor)])
def test_processor_arguments_without_a_variable_are_taken(make, cls):
    processor = make(environ=ENV, block_when_full=2.5, background=False)
    try:
        assert isinstance(processor, cls)
        assert processor.batcher.block_when_full == 2.5
        assert processor.batcher.background is False
    finally:
        processor.shutdown()


def test_a_bad_one_is_the_constructors_error():
    with pytest.raises(ValueError, match="block_when_full must be"):
        span_processor_from_env(environ=ENV, block_when_full=-1, background=False)
