"""The attribute names that make a span or log record a VWO event.

These names are the contract between whoever emits events (``VWOEvents``, an instrumented VWO
SDK, or the application's own tracer/logger) and the VWO processors: a span or log record
carrying ``vwo.event.type`` is a VWO event, anything else is ignored.

Two VWO formats share the contract. An int type is an event of the legacy format
(``vwo-python-sdk``: ``/server-side/batch-events``); a str type is the name of an FME event
(``vwo-fme-python-sdk``: ``/server-side/batch-events-v2``): ``vwo_variationShown``,
``vwo_syncVisitorProp`` or a custom event name such as ``purchase``. Which attributes each type
needs is the event-type table in ``vwo_otel.event_types``.
"""

#: the instrumentation scope of the tracer / logger / meter vwo_otel emits with
SCOPE = "vwo_otel"

#: int (legacy: 1 visitor / impression, 2 goal / conversion, 3 custom dimension) or str (an FME event name)
EVENT_TYPE = "vwo.event.type"
USER_ID = "vwo.user_id"  #: str: the application's user id (hashed into VWO's visitor uuid on the wire)
CAMPAIGN_ID = "vwo.campaign_id"  #: int: campaign id (legacy 1 and 2; FME vwo_variationShown)
VARIATION_ID = "vwo.variation_id"  #: int: variation id (legacy 1 and 2; FME vwo_variationShown)
GOAL_ID = "vwo.goal_id"  #: int: goal id (legacy 2)
REVENUE = "vwo.revenue"  #: int or float: revenue (legacy 2, optional)
DIMENSION_KEY = "vwo.dimension.key"  #: str: custom dimension key (legacy 3)
DIMENSION_VALUE = "vwo.dimension.value"  #: str: custom dimension value (legacy 3)
VISITOR_UA = "vwo.visitor.user_agent"  #: str: visitor's user agent (optional)
VISITOR_IP = "vwo.visitor.ip"  #: str: visitor's IP address (optional)
#: str: VWO's visitor id ``u`` already computed (32 uppercase hex, as VWO's SDKs compute it), sent as
#: is instead of hashing ``vwo.user_id``; needs ``vwo.account_id``, the account it was computed for.
VISITOR_UUID = "vwo.visitor.uuid"
ACCOUNT_ID = "vwo.account_id"  #: int: the VWO account the event belongs to (the gateway routes by it)

# FME events (str ``vwo.event.type``)
SESSION_ID = "vwo.session_id"  #: int: FME ``sessionId``, unix seconds (optional: default the event's time)
FEATURE_ID = "vwo.feature_id"  #: int: the feature of a holdout impression (FME ``fId``, optional)
#: str: a JSON object, the event's own properties (``track_event``'s properties; optional)
EVENT_PROPERTIES = "vwo.event.properties"
#: str: a JSON object of visitor attributes (``set_attribute``'s map; optional on other FME events)
VISITOR_PROPERTIES = "vwo.visitor.properties"
#: str: a JSON object, an instrumented FME SDK's usage statistics (its ``vwoMeta``; optional)
USAGE_STATS = "vwo.usage_stats"
#: str: FME ``msgId``, the event's idempotency key (optional: one is made when the event is queued)
MESSAGE_ID = "vwo.message_id"

VISITOR = 1
GOAL = 2
CUSTOM_DIMENSION = 3
VARIATION_SHOWN = "vwo_variationShown"  #: FME impression
SYNC_VISITOR_PROP = "vwo_syncVisitorProp"  #: FME visitor attributes

#: Span / log event names used by ``VWOEvents`` (informational; the type attribute decides).
EVENT_NAMES = {VISITOR: "vwo.visitor", GOAL: "vwo.goal", CUSTOM_DIMENSION: "vwo.custom_dimension"}
