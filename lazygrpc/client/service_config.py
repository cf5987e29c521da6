"""The grpc service config of the channels lazygrpc opens: balancing, health checks, retries.

Everything here is grpc's own machinery (docs/deployment.md, "Replicas"): the policy is a
JSON service config handed to the channel as `grpc.service_config`, no router of ours.

- **Balancing.** `round_robin` for targets that name several replicas (`dns:///…`, which
  resolves to every address of a headless Service, and `ipv4:a,b` / `ipv6:` lists);
  `pick_first` for one `host:port`. `?lb=pick_first|round_robin` in a URL overrides it.
- **Health.** `healthCheckConfig` makes grpc watch `grpc.health.v1.Health` on every
  subchannel (gRFC A17): a replica that says NOT_SERVING (draining) stops being picked
  while its in-flight calls finish. grpc honours it under `round_robin` only.
- **Keepalive.** Pings every `keepalive` seconds find a replica whose link died silently
  (on by default for replica sets only: a gRPC server that is not lazygrpc's answers pings
  more often than every 5 minutes with GOAWAY "too_many_pings" unless configured to accept
  them).
- **Retries.** UNAVAILABLE is retried (up to `max_attempts`, backing off) for the unary
  methods that change nothing: `GetModelInfo`, `ListModules`, `GetBrokerStats`, health
  `Check`; `ModuleService.Call` only when the caller declares the module idempotent
  (`connect(url, idempotent=True)` or `?idempotent=1`): grpc decides a retry in the client,
  by method name, so only the caller can say which module a call is for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache
from urllib.parse import parse_qsl

ROUND_ROBIN = "round_robin"
PICK_FIRST = "pick_first"
#: The health service every lazygrpc server answers for: "" is the whole server.
HEALTH_SERVICE_NAME = ""

#: Unary methods that change nothing on the server: retried on UNAVAILABLE.
IDEMPOTENT_METHODS: tuple[tuple[str, str], ...] = (
    ("lazygrpc.v1.ModelService", "GetModelInfo"),
    ("lazygrpc.v1.ModuleService", "ListModules"),
    ("lazygrpc.v1.BrokerService", "GetBrokerStats"),
    ("grpc.health.v1.Health", "Check"),
)
#: Retried too for modules the caller declared idempotent.
MODULE_CALL = ("lazygrpc.v1.ModuleService", "Call")

#: The shortest keepalive interval lazygrpc servers accept (`SERVER_OPTIONS`).
MIN_KEEPALIVE = 1.0
#: Seconds between keepalive pings on channels to replica sets, unless told otherwise.
DEFAULT_KEEPALIVE = 10.0

_FLAGS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def balances(target: str) -> bool:
    """Whether `target` names a set of replicas (round_robin's default)."""
    if target.startswith("dns:"):
        return True
    if target.startswith(("ipv4:", "ipv6:")):
        return "," in target
    return False


@dataclass(frozen=True)
class ChannelPolicy:
    """How a channel picks replicas and retries; `connect(url, policy=...)` or URL query.

    >>> ChannelPolicy(lb="pick_first", max_attempts=1).service_config("dns:///model:50051")
    '{"loadBalancingConfig": [{"pick_first": {}}], "healthCheckConfig": {"serviceName": ""}}'
    """

    #: `round_robin`, `pick_first`, or None: round_robin for targets of several replicas.
    lb: str | None = None
    #: grpc client-side health checking against grpc.health.v1 (under round_robin).
    health_check: bool = True
    #: Attempts of an idempotent call in all, first included (1: no retries; grpc caps at 5).
    max_attempts: int = 3
    #: Retry `ModuleService.Call` too: only for modules whose calls may run twice.
    idempotent: bool = False
    #: Seconds between HTTP/2 keepalive pings, and how long one may go unanswered: a peer
    #: whose link died silently (no RST) is dropped within about twice this, in-flight calls
    #: to it fail with UNAVAILABLE and the round goes on without it. lazygrpc servers accept
    #: >= 1 s. None: `DEFAULT_KEEPALIVE` for targets of several replicas, off for one; 0: off.
    keepalive: float | None = None

    def __post_init__(self) -> None:
        if self.lb not in (None, ROUND_ROBIN, PICK_FIRST):
            raise ValueError(f"lb={self.lb!r}: expected {ROUND_ROBIN!r} or {PICK_FIRST!r}")
        if not 1 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts={self.max_attempts!r}: expected 1-5 (grpc's cap)")
        if self.keepalive and not self.keepalive >= MIN_KEEPALIVE:
            raise ValueError(f"keepalive={self.keepalive!r}: expected 0 (off) or >= 1 s")

    def lb_for(self, target: str) -> str:
        """The balancing policy a channel to `target` uses."""
        if self.lb is not None:
            return self.lb
        return ROUND_ROBIN if balances(target) else PICK_FIRST

    def keepalive_options(self, target: str) -> list[tuple[str, int]]:
        """Channel options for `keepalive` (pings also on an idle connection: a health
        watch is a call that sends nothing for long)."""
        seconds = self.keepalive
        if seconds is None:
            seconds = DEFAULT_KEEPALIVE if balances(target) else 0
        if not seconds:
            return []
        ms = int(seconds * 1000)
        return [
            ("grpc.keepalive_time_ms", ms),
            ("grpc.keepalive_timeout_ms", ms),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
        ]

    def service_config(self, target: str) -> str:
        """The JSON service config of a channel to `target` (`grpc.service_config`)."""
        return _service_config(self, self.lb_for(target))

    def with_query(self, query: str, url: str) -> ChannelPolicy:
        """This policy with a URL's `lb=`, `health=`, `idempotent=`, `attempts=`,
        `keepalive=` applied;
        `ValueError` names the URL and the bad key."""
        changes: dict[str, object] = {}
        for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=True):
            if key == "lb":
                changes["lb"] = value
            elif key in ("health", "idempotent"):
                if value.lower() not in _FLAGS:
                    raise ValueError(f"invalid lazygrpc URL {url!r}: {key}={value!r} is not 0/1")
                changes["health_check" if key == "health" else key] = _FLAGS[value.lower()]
            elif key == "attempts" and value.isdigit():
                changes["max_attempts"] = int(value)
            elif key == "keepalive" and value.replace(".", "", 1).isdigit():
                changes["keepalive"] = float(value)
            else:
                raise ValueError(
                    f"invalid lazygrpc URL {url!r}: unknown option {key}={value!r} "
                    "(expected lb=, health=, idempotent=, attempts=N, keepalive=S)"
                )
        try:
            return replace(self, **changes)  # type: ignore[arg-type]
        except ValueError as exc:
            raise ValueError(f"invalid lazygrpc URL {url!r}: {exc}") from None


DEFAULT_POLICY = ChannelPolicy()


@lru_cache(maxsize=64)
def _service_config(policy: ChannelPolicy, lb: str) -> str:
    config: dict[str, object] = {"loadBalancingConfig": [{lb: {}}]}
    if policy.health_check:
        config["healthCheckConfig"] = {"serviceName": HEALTH_SERVICE_NAME}
    if policy.max_attempts > 1:
        methods = [*IDEMPOTENT_METHODS, *([MODULE_CALL] if policy.idempotent else [])]
        config["methodConfig"] = [
            {
                "name": [{"service": s, "method": m} for s, m in methods],
                "retryPolicy": {
                    "maxAttempts": policy.max_attempts,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    return json.dumps(config)
