"""Every state rule of the protocol core, in one place, readable as tables.

Anything not in these maps is invalid: the core answers it with a ``Rejected(UNEXPECTED)`` event.
"""

from __future__ import annotations

import enum
from typing import Final

from .wire import Kind


class Role(enum.Enum):
    AUTHOR = "author"
    SUBSCRIBER = "subscriber"


class SubscriptionState(enum.Enum):
    """A subscriber's subscription handshake (SPEC.md, "Subscriber state machine")."""

    IDLE = "idle"  #: nothing asked yet
    AWAIT_CHALLENGE = "await-challenge"  #: HELLO sent
    AWAIT_GRANT = "await-grant"  #: SUBSCRIBE sent, sealed to the author
    SUBSCRIBED = "subscribed"  #: at least one grant received
    REFUSED = "refused"  #: the author refused; a new HELLO may be sent


class BranchState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"  #: revoked or unsubscribed: nothing is accepted or published any more


#: Which message kinds each role accepts from the network.  (role, kind) -> handler name.
ACCEPTS: Final[dict[tuple[Role, Kind], str]] = {
    (Role.AUTHOR, Kind.HELLO): "_on_hello",
    (Role.AUTHOR, Kind.SUBSCRIBE): "_on_subscribe",
    (Role.AUTHOR, Kind.PACKET): "_on_chain_frame",
    (Role.AUTHOR, Kind.CHECKPOINT): "_on_chain_frame",
    (Role.AUTHOR, Kind.UNSUBSCRIBE): "_on_unsubscribe",
    (Role.AUTHOR, Kind.FETCH): "_on_fetch",
    (Role.AUTHOR, Kind.HEAD): "_on_head",
    (Role.AUTHOR, Kind.ACK): "_on_ack",
    (Role.SUBSCRIBER, Kind.ANNOUNCE): "_on_announce",
    (Role.SUBSCRIBER, Kind.CHALLENGE): "_on_challenge",
    (Role.SUBSCRIBER, Kind.GRANT): "_on_grant",
    (Role.SUBSCRIBER, Kind.REFUSE): "_on_refuse",
    (Role.SUBSCRIBER, Kind.ADMIT): "_on_admit",
    (Role.SUBSCRIBER, Kind.PACKET): "_on_chain_frame",
    (Role.SUBSCRIBER, Kind.CHECKPOINT): "_on_chain_frame",
    (Role.SUBSCRIBER, Kind.REVOKE): "_on_revoke",
    (Role.SUBSCRIBER, Kind.FETCH): "_on_fetch",
    (Role.SUBSCRIBER, Kind.HEAD): "_on_head",
    (Role.SUBSCRIBER, Kind.ACK): "_on_ack",
    # Anchor proofs flow from the author to members only (THREATS 7).
    (Role.SUBSCRIBER, Kind.ANCHOR_PROOF): "_on_anchor_proof",
}

#: The subscriber's handshake: (state, input) -> next state.  Inputs are message kinds received, or the
#: string "hello" for the local call that starts a subscription.
SUBSCRIPTION: Final[dict[tuple[SubscriptionState, Kind | str], SubscriptionState]] = {
    (SubscriptionState.IDLE, "hello"): SubscriptionState.AWAIT_CHALLENGE,
    (SubscriptionState.REFUSED, "hello"): SubscriptionState.AWAIT_CHALLENGE,
    (SubscriptionState.SUBSCRIBED, "hello"): SubscriptionState.AWAIT_CHALLENGE,
    (SubscriptionState.AWAIT_CHALLENGE, "hello"): SubscriptionState.AWAIT_CHALLENGE,
    (SubscriptionState.AWAIT_GRANT, "hello"): SubscriptionState.AWAIT_CHALLENGE,
    (SubscriptionState.AWAIT_CHALLENGE, Kind.CHALLENGE): SubscriptionState.AWAIT_GRANT,
    # The answer to our SUBSCRIBE: ADMIT or REFUSE naming its nonce (SPEC 9.1).  AWAIT_CHALLENGE: the late answer
    # to the SUBSCRIBE of the same attempt, after a HELLO retry.
    (SubscriptionState.AWAIT_GRANT, Kind.ADMIT): SubscriptionState.SUBSCRIBED,
    (SubscriptionState.AWAIT_CHALLENGE, Kind.ADMIT): SubscriptionState.SUBSCRIBED,
    # (Taken when no other SUBSCRIBE of the attempt is unanswered: until then the handshake awaits their answers.)
    (SubscriptionState.AWAIT_GRANT, Kind.REFUSE): SubscriptionState.REFUSED,
    (SubscriptionState.AWAIT_CHALLENGE, Kind.REFUSE): SubscriptionState.REFUSED,
    # Grants (our branch, groups, re-keys) arrive at any time.  Outside a handshake a grant makes us subscribed (a
    # branch the author opened for us unasked); while one runs (AWAIT_*) it is applied and the handshake goes on:
    # only ADMIT ends it.
    (SubscriptionState.SUBSCRIBED, Kind.GRANT): SubscriptionState.SUBSCRIBED,
    (SubscriptionState.IDLE, Kind.GRANT): SubscriptionState.SUBSCRIBED,
    (SubscriptionState.REFUSED, Kind.GRANT): SubscriptionState.SUBSCRIBED,
}

#: Branch life cycle: (state, event) -> next state.
BRANCH: Final[dict[tuple[BranchState, str], BranchState]] = {
    (BranchState.OPEN, "grant"): BranchState.OPEN,  # re-key: epoch + 1
    (BranchState.OPEN, "revoke"): BranchState.CLOSED,
    (BranchState.OPEN, "unsubscribe"): BranchState.CLOSED,
}
