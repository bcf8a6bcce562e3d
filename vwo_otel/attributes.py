"""The attribute names that make a span or log record a VWO event.

These names are the contract between whoever emits events (``VWOEvents`` or the
application's own tracer/logger) and the VWO processors: a span or log record
carrying ``vwo.event.type`` is a VWO event, anything else is ignored.
"""

EVENT_TYPE = "vwo.event.type"  #: int: 1 visitor (impression), 2 goal (conversion), 3 custom dimension
USER_ID = "vwo.user_id"  #: str: the application's user id (hashed into VWO's visitor uuid on the wire)
CAMPAIGN_ID = "vwo.campaign_id"  #: int: campaign id (eT 1 and 2)
VARIATION_ID = "vwo.variation_id"  #: int: variation id (eT 1 and 2)
GOAL_ID = "vwo.goal_id"  #: int: goal id (eT 2)
REVENUE = "vwo.revenue"  #: int or float: revenue (eT 2, optional)
DIMENSION_KEY = "vwo.dimension.key"  #: str: custom dimension key (eT 3)
DIMENSION_VALUE = "vwo.dimension.value"  #: str: custom dimension value (eT 3)
VISITOR_UA = "vwo.visitor.user_agent"  #: str: visitor's user agent (optional)
VISITOR_IP = "vwo.visitor.ip"  #: str: visitor's IP address (optional)
#: str: VWO's visitor id ``u`` already computed (32 uppercase hex, as VWO's SDKs compute it), sent as
#: is instead of hashing ``vwo.user_id``; needs ``vwo.account_id``, the account it was computed for.
VISITOR_UUID = "vwo.visitor.uuid"
ACCOUNT_ID = "vwo.account_id"  #: int: the VWO account the event belongs to (the gateway routes by it)

VISITOR = 1
GOAL = 2
CUSTOM_DIMENSION = 3

#: Span / log event names used by ``VWOEvents`` (informational; the type attribute decides).
EVENT_NAMES = {VISITOR: "vwo.visitor", GOAL: "vwo.goal", CUSTOM_DIMENSION: "vwo.custom_dimension"}
