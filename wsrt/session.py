"""One connection's control state, Sans-I/O.

A :class:`Session` takes the client's text frames and answers with
:class:`Effects`: frames to send, channels to add to or drop from the hub,
and possibly a close. It holds the grants of the connection's token, its
subscriptions, the control-message rate limit and the abuse counter. The
gateway applies the effects; the unit tests call :meth:`Session.handle`
directly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from wsrt import filters, protocol
from wsrt.auth import AuthError, Claims, Verifier
from wsrt.filters import Filter, FilterError
from wsrt.protocol import Channel, ProtocolError, Start, overlaps, parse_channel

#: Default window over which errors count towards ``max_errors`` (a setting).
ERROR_WINDOW_SECONDS = 10.0


class Replay(NamedTuple):
    """A subscription with a start field: the gateway replays, then replies ``subscribed``."""

    channel: Channel
    start: Start
    id: protocol.RequestId


@dataclass
class Effects:
    """What the gateway must do after one client frame."""

    replies: list[bytes] = field(default_factory=list)
    subscribe: list[Channel] = field(default_factory=list)
    #: Subscriptions that start in the past (docs/design.md, "Resume and replay"); no reply yet.
    replay: list[Replay] = field(default_factory=list)
    unsubscribe: list[Channel] = field(default_factory=list)
    close: tuple[int, str] | None = None
    #: The token was replaced: reschedule the expiry timer.
    refreshed: bool = False


class Session:
    def __init__(
        self,
        claims: Claims,
        *,
        topics: frozenset[str],
        verifier: Verifier,
        max_subscriptions: int,
        control_rate: int,
        max_errors: int,
        now: float,
        error_window: float = ERROR_WINDOW_SECONDS,
        max_channel_bytes: int = 256,
        state_topics: frozenset[str] = frozenset(),
        max_filter_bytes: int = filters.MAX_BYTES,
    ) -> None:
        self.claims = claims
        #: WS_FILTER_MAX_BYTES: the largest ``filter`` a subscribe may carry.
        self.max_filter_bytes = max_filter_bytes
        #: WS_STATE_TOPICS: the topics a ``snapshot`` may ask for.
        self.state_topics = state_topics
        self.topics = topics
        self.verifier = verifier
        self.max_subscriptions = max_subscriptions
        self.max_channel_bytes = max_channel_bytes
        self.control_rate = control_rate
        self.max_errors = max_errors
        self.error_window = error_window
        self.subscriptions: set[str] = set()
        #: Subscriptions made with a start field: nothing may overlap them.
        self.replayed: set[str] = set()
        #: Channel → the filter its records pass (the client's ``filter`` and ``keys`` and
        #: the token's ``filters`` claim, AND-ed); nothing may overlap these either.
        self.matches: dict[str, Filter] = {}
        #: Channel → its ``max_rate`` (messages per second per key); alone as well.
        self.rates: dict[str, float] = {}
        self._tokens = float(control_rate)
        self._last = now
        #: Times of recent errors; made at the first (an empty deque costs ~0.8 KB).
        self._errors: deque[float] | None = None

    def handle(self, text: str, now: float) -> Effects:
        """Answer one client text frame received at monotonic time ``now``."""
        effects = Effects()
        if not self._take_token(now):
            self._fail(
                effects,
                ProtocolError(
                    protocol.RATE_LIMITED,
                    f"more than {self.control_rate} control messages per second",
                    _request_id(text),
                ),
                now,
                "rate limit exceeded",
            )
            return effects
        try:
            control = protocol.parse_control(text)
            if isinstance(control, protocol.Subscribe):
                self._subscribe(
                    control.channel, control.id, effects, control.start, control.filter,
                    control.keys, control.max_rate,
                )  # fmt: skip
            elif isinstance(control, protocol.Unsubscribe):
                self._check_length(control.channel, control.id)
                self.forget(control.channel)
                effects.unsubscribe.append(parse_channel(control.channel))
                effects.replies.append(protocol.unsubscribed_reply(control.channel, control.id))
            elif isinstance(control, protocol.Ping):
                effects.replies.append(protocol.pong_reply(control.id))
            else:
                self._refresh(control.token, control.id, effects)
        except ProtocolError as exc:
            self._fail(effects, exc, now, "too many invalid messages")
        return effects

    def subscribe_at_connect(self, channels: list[str], now: float) -> Effects:
        """``?channels=a,b``: each answered like a ``subscribe``."""
        effects = Effects()
        for channel in channels:
            try:
                self._subscribe(channel, None, effects)
            except ProtocolError as exc:
                self._fail(effects, exc, now, "too many invalid messages")
        return effects

    def subscribe_all(self, subscribes: list[protocol.Subscribe], now: float) -> Effects:
        """An event stream's subscriptions (wsrt/sse.py), each answered like a ``subscribe``
        but not counted against the control rate: they are the request itself."""
        effects = Effects()
        for c in subscribes:
            try:
                self._subscribe(c.channel, c.id, effects, c.start, c.filter, c.keys, c.max_rate)
            except ProtocolError as exc:
                self._fail(effects, exc, now, "too many invalid messages")
        return effects

    def forget(self, channel: str) -> None:
        """``channel`` is no longer subscribed (unsubscribed, or its replay could not start)."""
        self.subscriptions.discard(channel)
        self.replayed.discard(channel)
        self.matches.pop(channel, None)
        self.rates.pop(channel, None)

    def _subscribe(
        self,
        channel: str,
        request_id: protocol.RequestId,
        effects: Effects,
        start: Start | None = None,
        given: object = protocol.ABSENT,
        keys: object = protocol.ABSENT,
        max_rate: object = protocol.ABSENT,
    ) -> None:
        self._check_length(channel, request_id)
        # Grants first: a restricted token learns nothing about other topics.
        if not self.claims.allows(channel):
            raise ProtocolError(
                protocol.FORBIDDEN, "your token does not grant this channel", request_id, channel
            )
        route = parse_channel(channel)
        if route.topic not in self.topics or route.key == "":
            raise ProtocolError(protocol.UNKNOWN_CHANNEL, "no such channel", request_id, channel)
        if isinstance(start, protocol.Snapshot) and route.topic not in self.state_topics:
            raise ProtocolError(
                protocol.BAD_REQUEST,
                f"'snapshot' needs a state topic: WS_STATE_TOPICS does not name {route.topic}",
                request_id,
                channel,
            )
        match = self._match(route, request_id, given, keys)
        rate = _rate(max_rate, request_id, channel)
        if channel in self.subscriptions:
            held = self.matches.get(channel)
            same = (held and held.canonical) == (match and match.canonical)
            if not same or self.rates.get(channel) != rate:
                raise ProtocolError(
                    protocol.BAD_REQUEST,
                    "already subscribed: unsubscribe first to change the filter or max_rate",
                    request_id,
                    channel,
                )
        self._check_overlap(route, request_id, start, match is not None or rate is not None)
        if channel not in self.subscriptions:
            if len(self.subscriptions) >= self.max_subscriptions:
                raise ProtocolError(
                    protocol.TOO_MANY_SUBSCRIPTIONS,
                    f"at most {self.max_subscriptions} subscriptions per connection",
                    request_id,
                    channel,
                )
            self.subscriptions.add(channel)
            if match is not None:
                self.matches[channel] = match
            if rate is not None:
                self.rates[channel] = rate
            if start is not None:
                self.replayed.add(channel)
                effects.replay.append(Replay(route, start, request_id))
                return
            effects.subscribe.append(route)
        effects.replies.append(protocol.subscribed_reply(channel, request_id))

    def _check_length(self, channel: str, request_id: protocol.RequestId) -> None:
        """Bound what a channel name can make the server hold (and echo, and log)."""
        if len(channel.encode()) > self.max_channel_bytes:
            raise ProtocolError(
                protocol.BAD_REQUEST,
                f"channel names are at most {self.max_channel_bytes} bytes",
                request_id,
            )

    def _match(
        self, route: Channel, request_id: protocol.RequestId, given: object, keys: object
    ) -> Filter | None:
        """The filter of a subscription: the token's for its topic, ``keys`` and ``filter``."""
        try:
            mine = None if given is protocol.ABSENT else filters.parse(given, self.max_filter_bytes)
            listed = None if keys is protocol.ABSENT else filters.keys_filter(keys)
        except FilterError as exc:
            raise ProtocolError(protocol.BAD_REQUEST, str(exc), request_id, route.name) from None
        if listed is not None and route.key is not None:
            raise ProtocolError(
                protocol.BAD_REQUEST, "'keys' goes with a topic channel, not topic:key",
                request_id, route.name,
            )  # fmt: skip
        return filters.both(self.claims.filter_for(route.topic), listed, mine)

    def _check_overlap(
        self,
        route: Channel,
        request_id: protocol.RequestId,
        start: Start | None,
        alone: bool = False,
    ) -> None:
        """Exactly once per connection: a replayed subscription shares its messages with none.

        A message matching two subscriptions is sent once; while one of them
        replays history that rule cannot hold, so a start field needs the
        channel (and any overlapping one) unsubscribed, and a channel
        subscribed with a start field admits no overlapping subscription. A
        filtered or rate-capped subscription is routed on its own too: the same
        rules.
        """
        if start is not None and route.name in self.subscriptions:
            raise ProtocolError(
                protocol.BAD_REQUEST,
                "already subscribed: unsubscribe first to start from another position",
                request_id,
                route.name,
            )
        alone = alone or start is not None
        others = self.subscriptions
        if not alone:
            others = self.replayed | self.matches.keys() | self.rates.keys()
        for name in others:
            if name != route.name and overlaps(route, parse_channel(name)):
                how = "with a start field" if name in self.replayed else "with a filter"
                if name in self.rates and name not in self.replayed:
                    how = "with max_rate"
                raise ProtocolError(
                    protocol.BAD_REQUEST,
                    f"overlaps {name[:200]!r}, subscribed "
                    + ("already" if alone else how)
                    + ": unsubscribe it first",
                    request_id,
                    route.name,
                )

    def _refresh(self, token: str, request_id: protocol.RequestId, effects: Effects) -> None:
        try:
            claims = self.verifier.verify(token)
        except AuthError as exc:
            raise ProtocolError(protocol.UNAUTHORIZED, exc.detail, request_id) from None
        if claims.subject != self.claims.subject:
            raise ProtocolError(
                protocol.UNAUTHORIZED, "the new token is for another subject", request_id
            )
        before, self.claims = self.claims, claims
        effects.refreshed = True
        for channel in sorted(self.subscriptions):
            topic = parse_channel(channel).topic
            if not claims.allows(channel) or _canonical(claims, topic) != _canonical(
                before, topic
            ):  # a filter the token imposes changed: the client subscribes again under it
                self.forget(channel)
                effects.unsubscribe.append(parse_channel(channel))
                effects.replies.append(
                    protocol.unsubscribed_reply(channel, None, reason=protocol.FORBIDDEN)
                )
        effects.replies.append(protocol.refreshed_reply(claims.expires_at, request_id))

    def _take_token(self, now: float) -> bool:
        rate = self.control_rate
        self._tokens = min(float(rate), self._tokens + (now - self._last) * rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def _fail(self, effects: Effects, error: ProtocolError, now: float, abuse: str) -> None:
        effects.replies.append(error.reply())
        errors = self._errors
        if errors is None:
            errors = self._errors = deque()
        errors.append(now)
        while errors and errors[0] <= now - self.error_window:
            errors.popleft()
        if len(errors) > self.max_errors:
            effects.close = (protocol.CLOSE_POLICY_VIOLATION, abuse)


#: The highest ``max_rate``: more a second than a screen shows is no cap.
MAX_RATE = 1000.0


def _rate(value: object, request_id: protocol.RequestId, channel: str) -> float | None:
    """A subscribe's ``max_rate``: messages per second per key, above 0 and at most 1000."""
    if value is protocol.ABSENT:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_RATE:
        raise ProtocolError(
            protocol.BAD_REQUEST,
            "'max_rate' must be a number of messages per second per key above 0 and at "
            f"most {MAX_RATE:g}",
            request_id,
            channel,
        )
    return float(value)


def _canonical(claims: Claims, topic: str) -> bytes | None:
    imposed = claims.filter_for(topic)
    return None if imposed is None else imposed.canonical


def _request_id(text: str) -> protocol.RequestId:
    """The ``id`` of a message, to echo in an error about it (``None`` if it has none)."""
    try:
        return protocol.parse_control(text).id
    except ProtocolError as exc:
        return exc.request_id
