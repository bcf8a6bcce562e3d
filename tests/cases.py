"""Test cases shared by the unit and integration layers."""

import math

from vwo_otel import attributes as A

NAN, INF = math.nan, math.inf


BAD_CALLS = [
    # (id, method, args, kwargs, argument name the message must contain)
    ("activate-missing-user", "activate", (1, 2), {}, "user_id"),
    ("activate-None-user", "activate", (1, 2, None), {}, "user_id"),
    ("activate-empty-user", "activate", (1, 2, ""), {}, "user_id"),
    ("activate-bool-user", "activate", (1, 2, True), {}, "user_id"),
    ("activate-float-user", "activate", (1, 2, 1.5), {}, "user_id"),
    ("activate-bool-campaign", "activate", (True, 2, "u"), {}, "campaign_id"),
    ("activate-str-campaign", "activate", ("1", 2, "u"), {}, "campaign_id"),
    ("activate-negative-campaign", "activate", (-1, 2, "u"), {}, "campaign_id"),
    ("activate-None-campaign", "activate", (None, 2, "u"), {}, "campaign_id"),
    ("activate-float-campaign", "activate", (1.0, 2, "u"), {}, "campaign_id"),
    ("activate-huge-campaign", "activate", (2**63, 2, "u"), {}, "campaign_id"),  # VWO would refuse the batch
    ("activate-bool-variation", "activate", (1, False, "u"), {}, "variation_id"),
    ("activate-str-variation", "activate", (1, "2", "u"), {}, "variation_id"),
    ("activate-negative-variation", "activate", (1, -2, "u"), {}, "variation_id"),
    ("activate-int-ua", "activate", (1, 2, "u"), {"visitor_ua": 5}, "visitor_ua"),
    ("activate-bytes-ip", "activate", (1, 2, "u"), {"visitor_ip": b"1.2.3.4"}, "visitor_ip"),
    ("feature-empty-user", "is_feature_enabled", (1, 2, ""), {}, "user_id"),
    ("feature-negative-campaign", "is_feature_enabled", (-5, 2, "u"), {}, "campaign_id"),
    ("track-missing-user", "track", (1, 2, 3), {}, "user_id"),
    ("track-None-user", "track", (1, 2, 3, None), {}, "user_id"),
    ("track-empty-user", "track", (1, 2, 3, ""), {}, "user_id"),
    ("track-bool-goal", "track", (1, 2, True, "u"), {}, "goal_id"),
    ("track-str-goal", "track", (1, 2, "3", "u"), {}, "goal_id"),
    ("track-negative-goal", "track", (1, 2, -3, "u"), {}, "goal_id"),
    ("track-str-campaign", "track", ("1", 2, 3, "u"), {}, "campaign_id"),
    ("track-huge-goal", "track", (1, 2, 2**64, "u"), {}, "goal_id"),
    ("track-huge-int-revenue", "track", (1, 2, 3, "u"), {"revenue": 10**30}, "revenue"),
    ("track-int-revenue-too-big-for-float", "track", (1, 2, 3, "u"), {"revenue": 10**400}, "revenue"),
    ("track-nan-revenue", "track", (1, 2, 3, "u"), {"revenue": NAN}, "revenue"),
    ("track-inf-revenue", "track", (1, 2, 3, "u"), {"revenue": INF}, "revenue"),
    ("track-neg-inf-revenue", "track", (1, 2, 3, "u"), {"revenue": -INF}, "revenue"),
    ("track-str-revenue", "track", (1, 2, 3, "u"), {"revenue": "10"}, "revenue"),
    ("track-bool-revenue", "track", (1, 2, 3, "u"), {"revenue": True}, "revenue"),
    ("track-int-ip", "track", (1, 2, 3, "u"), {"visitor_ip": 1234}, "visitor_ip"),
    ("push-missing-user", "push", (), {"custom_dimensions": {"k": "v"}}, "user_id"),
    ("push-None-user", "push", (None, {"k": "v"}), {}, "user_id"),
    ("push-empty-user", "push", ("", {"k": "v"}), {}, "user_id"),
    ("push-missing-dims", "push", ("u",), {}, "custom_dimensions"),
    ("push-None-dims", "push", ("u", None), {}, "custom_dimensions"),
    ("push-list-dims", "push", ("u", [("k", "v")]), {}, "custom_dimensions"),
    ("push-str-dims", "push", ("u", "k=v"), {}, "custom_dimensions"),
    ("push-empty-dims", "push", ("u", {}), {}, "custom_dimensions"),
    ("push-int-key", "push", ("u", {1: "v"}), {}, "custom_dimensions"),
    ("push-empty-key", "push", ("u", {"": "v"}), {}, "custom_dimensions"),
    ("push-one-None-value", "push", ("u", {"a": "x", "b": None, "c": "z"}), {}, "custom_dimensions"),
    ("push-one-list-value", "push", ("u", {"a": "x", "b": ["y"]}), {}, "custom_dimensions"),
    ("push-one-bool-value", "push", ("u", {"a": "x", "b": True}), {}, "custom_dimensions"),
    ("push-one-bad-key-last", "push", ("u", {"a": "x", "b": "y", 3: "z"}), {}, "custom_dimensions"),
    ("push-one-nan-value", "push", ("u", {"a": "x", "b": NAN}), {}, "custom_dimensions"),
    ("push-one-inf-value", "push", ("u", {"a": INF}), {}, "custom_dimensions"),
    ("push-bad-ua", "push", ("u", {"a": "x", "b": "y"}), {"visitor_ua": 1}, "visitor_ua"),
]

MALFORMED = [
    ("goal-without-campaign", {A.EVENT_TYPE: 2, A.USER_ID: "u"}, "vwo.campaign_id"),
    ("unknown-type-9", {A.EVENT_TYPE: 9, A.USER_ID: "u", A.CAMPAIGN_ID: 1, A.VARIATION_ID: 1}, "vwo.event.type"),
    ("type-as-str", {A.EVENT_TYPE: "1", A.USER_ID: "u", A.CAMPAIGN_ID: 1, A.VARIATION_ID: 1}, "vwo.event.type"),
    ("visitor-without-user", {A.EVENT_TYPE: 1, A.CAMPAIGN_ID: 1, A.VARIATION_ID: 1}, "user_id"),
    ("negative-variation", {A.EVENT_TYPE: 1, A.USER_ID: "u", A.CAMPAIGN_ID: 1, A.VARIATION_ID: -1},
     "vwo.variation_id"),
    ("nan-revenue", {A.EVENT_TYPE: 2, A.USER_ID: "u", A.CAMPAIGN_ID: 1, A.VARIATION_ID: 1, A.GOAL_ID: 1,
                     A.REVENUE: math.nan}, "revenue"),
    ("huge-campaign", {A.EVENT_TYPE: 1, A.USER_ID: "u", A.CAMPAIGN_ID: 2**63, A.VARIATION_ID: 1},
     "vwo.campaign_id"),
    ("huge-int-revenue", {A.EVENT_TYPE: 2, A.USER_ID: "u", A.CAMPAIGN_ID: 1, A.VARIATION_ID: 1, A.GOAL_ID: 1,
                          A.REVENUE: 10**400}, "revenue"),
    ("dimension-without-key", {A.EVENT_TYPE: 3, A.USER_ID: "u", A.DIMENSION_VALUE: "v"}, "vwo.dimension.key"),
    ("dimension-without-value", {A.EVENT_TYPE: 3, A.USER_ID: "u", A.DIMENSION_KEY: "k"}, "vwo.dimension.value"),
    ("dimension-nan-value", {A.EVENT_TYPE: 3, A.USER_ID: "u", A.DIMENSION_KEY: "k", A.DIMENSION_VALUE: math.nan},
     "vwo.dimension.value"),
]
